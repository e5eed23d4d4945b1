//! Device certificates ready to hand out: one `.pfx`, or a zip of `.pfx`
//! files for a CSV of devices, under a one-time password shown once; each
//! certificate recorded in the inventory. A device with a revoked
//! certificate (a lost laptop) gets none: its id is not reused.

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use komugate_policy::{decode_csv, DecodeError};

use super::inventory::{self, CertRecord};
use super::{pfx, sign_device, DeviceCertOptions};

/// Most devices in one bulk issue.
pub const MAX_BULK_DEVICES: usize = 2000;
/// Largest bulk CSV accepted, in bytes.
pub const MAX_BULK_CSV_BYTES: usize = 1024 * 1024;

/// Why nothing was issued.
#[derive(Debug)]
pub enum DeliveryError {
    /// A certificate of this device is revoked.
    Revoked {
        device: String,
        serial: String,
    },
    /// The bulk CSV is too large.
    TooLarge {
        bytes: usize,
    },
    /// The bulk CSV's text encoding.
    Encoding(DecodeError),
    /// A line of the bulk CSV (1-based).
    Row {
        line: usize,
        problem: RowProblem,
    },
    Other(anyhow::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowProblem {
    NoHeader,
    BadDeviceId(String),
    Duplicate { device: String, first: usize },
    Malformed(String),
    TooMany,
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Revoked { device, serial } => write!(
                f,
                "device {device} has a revoked certificate (serial {serial}): a lost laptop's id is not reused; issue the replacement under a new device id"
            ),
            DeliveryError::TooLarge { bytes } => write!(
                f,
                "the CSV is {bytes} bytes; at most {MAX_BULK_CSV_BYTES} bytes ({MAX_BULK_DEVICES} devices) per bulk issue: split it"
            ),
            DeliveryError::Encoding(e) => write!(f, "{e}"),
            DeliveryError::Row { line, problem } => {
                write!(f, "line {line}: ")?;
                match problem {
                    RowProblem::NoHeader => write!(f, "expected a header row with a `device_id` column"),
                    RowProblem::BadDeviceId(e) => write!(f, "{e}"),
                    RowProblem::Duplicate { device, first } => {
                        write!(f, "device {device} is listed twice (first on line {first})")
                    }
                    RowProblem::Malformed(e) => write!(f, "{e}"),
                    RowProblem::TooMany => write!(f, "more than {MAX_BULK_DEVICES} devices: split the file"),
                }
            }
            DeliveryError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for DeliveryError {}

impl From<anyhow::Error> for DeliveryError {
    fn from(e: anyhow::Error) -> Self {
        DeliveryError::Other(e)
    }
}

impl DeliveryError {
    /// The message in Japanese, for the console.
    pub fn ja(&self) -> String {
        match self {
            DeliveryError::Revoked { device, serial } => format!(
                "端末 {device} の証明書は失効済みです（シリアル {serial}）。紛失・盗難にあった端末の ID は再利用できません。代わりの端末には新しい端末 ID で発行してください。"
            ),
            DeliveryError::TooLarge { bytes } => format!(
                "CSV が大きすぎます（{} KB）。一括発行は 1 回 {} KB・{MAX_BULK_DEVICES} 台までです。ファイルを分けてください。",
                bytes / 1024,
                MAX_BULK_CSV_BYTES / 1024
            ),
            DeliveryError::Encoding(e) => crate::console::text_devices::decode_error_ja(e),
            DeliveryError::Row { line, problem } => {
                let what = match problem {
                    RowProblem::NoHeader => "見出し行に device_id 列がありません。1 行目を「device_id,user,groups」のようにしてください。".to_string(),
                    RowProblem::BadDeviceId(e) => format!("端末 ID が使えません（半角英数字と - _ . @、64 文字まで）: {e}"),
                    RowProblem::Duplicate { device, first } => format!("端末 {device} が 2 回書かれています（最初は {first} 行目）。"),
                    RowProblem::Malformed(e) => format!("CSV の形式が正しくありません: {e}"),
                    RowProblem::TooMany => format!("{MAX_BULK_DEVICES} 台を超えています。ファイルを分けてください。"),
                };
                format!("CSV の {line} 行目: {what} 何も発行していません。")
            }
            DeliveryError::Other(e) => format!("証明書を発行できませんでした: {e:#}"),
        }
    }
}

/// One device's certificate as a `.pfx`.
pub struct Pfx {
    pub bytes: Vec<u8>,
    pub password: String,
    pub record: CertRecord,
}

/// A zip of `<device>.pfx`, every one under the same one-time password.
pub struct Bulk {
    pub zip: Vec<u8>,
    pub password: String,
    pub records: Vec<CertRecord>,
}

fn refuse_revoked(records: &[CertRecord], device: &str) -> Result<(), DeliveryError> {
    match records.iter().find(|r| r.device == device && r.revoked) {
        Some(r) => Err(DeliveryError::Revoked {
            device: device.to_string(),
            serial: r.serial.clone(),
        }),
        None => Ok(()),
    }
}

fn issue_one(dir: &Path, device: &str, days: u32, password: &str) -> Result<Pfx, DeliveryError> {
    let (ca, issued) = sign_device(
        dir,
        &DeviceCertOptions {
            device_id: device,
            groups: &[],
            days,
        },
    )?;
    let bytes = pfx::to_pfx(&issued, ca.cert_der(), device, password)?;
    let record = inventory::record(dir, &issued.cert_pem)?;
    Ok(Pfx {
        bytes,
        password: password.to_string(),
        record,
    })
}

/// Issues a certificate for `device` (no groups: the registry gives them)
/// as a `.pfx` under a fresh password. `revoked_list`: the gateway's
/// revoked-serials list.
pub fn issue_pfx(
    dir: &Path,
    revoked_list: &Path,
    device: &str,
    days: u32,
) -> Result<Pfx, DeliveryError> {
    super::validate_name("device id", device).map_err(|e| DeliveryError::Row {
        line: 0,
        problem: RowProblem::BadDeviceId(e.to_string()),
    })?;
    refuse_revoked(&inventory::list(dir, revoked_list)?, device)?;
    issue_one(dir, device, days, &pfx::one_time_password()?)
}

/// The device ids of a bulk CSV (a `device_id` column; the registry CSV
/// itself will do), every row checked before anything is issued.
pub fn bulk_devices(bytes: &[u8]) -> Result<Vec<String>, DeliveryError> {
    if bytes.len() > MAX_BULK_CSV_BYTES {
        return Err(DeliveryError::TooLarge { bytes: bytes.len() });
    }
    let (text, _) = decode_csv(bytes).map_err(DeliveryError::Encoding)?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| DeliveryError::Row {
        line: 1,
        problem: RowProblem::Malformed(e.to_string()),
    })?;
    let column = header
        .iter()
        .position(|h| {
            matches!(
                h.trim().to_ascii_lowercase().as_str(),
                "device_id" | "device" | "deviceid"
            )
        })
        .ok_or(DeliveryError::Row {
            line: 1,
            problem: RowProblem::NoHeader,
        })?;
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut devices = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| DeliveryError::Row {
            line: e.position().map(|p| p.line() as usize).unwrap_or(0),
            problem: RowProblem::Malformed(e.to_string()),
        })?;
        let line = row.position().map(|p| p.line() as usize).unwrap_or(0);
        let device = row.get(column).unwrap_or("").trim().to_string();
        if row.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        super::validate_name("device id", &device).map_err(|e| DeliveryError::Row {
            line,
            problem: RowProblem::BadDeviceId(e.to_string()),
        })?;
        if let Some(first) = seen.insert(device.clone(), line) {
            return Err(DeliveryError::Row {
                line,
                problem: RowProblem::Duplicate { device, first },
            });
        }
        if devices.len() == MAX_BULK_DEVICES {
            return Err(DeliveryError::Row {
                line,
                problem: RowProblem::TooMany,
            });
        }
        devices.push(device);
    }
    Ok(devices)
}

/// Issues a certificate for every device of a bulk CSV: all rows are
/// checked (and no device may have a revoked certificate) before the first
/// is issued.
pub fn issue_bulk(
    dir: &Path,
    revoked_list: &Path,
    csv: &[u8],
    days: u32,
) -> Result<Bulk, DeliveryError> {
    let devices = bulk_devices(csv)?;
    let records = inventory::list(dir, revoked_list)?;
    for d in &devices {
        refuse_revoked(&records, d)?;
    }
    let password = pfx::one_time_password()?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut issued = Vec::new();
    for d in &devices {
        let one = issue_one(dir, d, days, &password)?;
        zip.start_file(format!("{d}.pfx"), options)
            .and_then(|()| zip.write_all(&one.bytes).map_err(Into::into))
            .map_err(|e| anyhow!("writing the zip: {e}"))?;
        issued.push(one.record);
    }
    let zip = zip
        .finish()
        .map_err(|e| anyhow!("writing the zip: {e}"))?
        .into_inner();
    Ok(Bulk {
        zip,
        password,
        records: issued,
    })
}
