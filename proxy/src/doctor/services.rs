//! Checks that talk to something: the running gateway (its admin
//! listener), ClickHouse, the SMTP server and the alert webhook — each the
//! way the gateway itself reaches it, without sending an alert.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::http::{self, Url};
use super::report::{Check, Report, Status};
use crate::config::Config;
use crate::egress::Egress;

/// The running gateway on this host: `/healthz` and its policy generation
/// and reload failures from `/metrics`, over TLS when the admin listener
/// uses it (the configured server certificate is the only one accepted).
pub async fn running_gateway(config: &Config, timeout: Duration, report: &mut Report) {
    let subject = "稼働中のゲートウェイ / running gateway";
    let Some(listen) = Config::listen_addr(&config.listen.admin) else {
        report.push(
            Check::new("gateway", subject, Status::Skip)
                .detail("[listen] admin がありません / no admin listener configured"),
        );
        return;
    };
    // A wildcard listener is reached on this host's loopback.
    let addr = match listen.ip().is_unspecified() {
        true if listen.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], listen.port())),
        true => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port())),
        false => listen,
    };
    let tls = crate::console::tls::wanted(config, listen);
    let fetch = |path: &'static str| async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let host = addr.to_string();
        if tls {
            let pinned = pinned_client(config)?;
            let stream = http::tls(tcp, &addr.ip().to_string(), pinned).await?;
            http::get(stream, &host, path, &[]).await
        } else {
            http::get(tcp, &host, path, &[]).await
        }
    };
    let health = tokio::time::timeout(timeout, fetch("/healthz")).await;
    let health = match health {
        Err(_) => Err(format!(
            "{addr}: {} 秒以内に応答なし / no answer within {} s",
            timeout.as_secs(),
            timeout.as_secs()
        )),
        Ok(r) => r,
    };
    match health {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            report.push(
                Check::new("gateway", subject, Status::Fail)
                    .detail(format!(
                        "{addr}/healthz: HTTP {status} {}",
                        String::from_utf8_lossy(&body).trim()
                    ))
                    .fix("停止処理中なら待つ; それ以外はログを確認 / if it is draining wait; otherwise read its log"),
            );
            return;
        }
        Err(e) => {
            report.push(
                Check::new("gateway", subject, Status::Fail)
                    .detail(e)
                    .fix("komugate が動いているか確認 (systemctl status komugate / kubectl get pods) / check that komugate runs"),
            );
            return;
        }
    }
    let metrics = match tokio::time::timeout(timeout, fetch("/metrics")).await {
        Ok(Ok((200, body))) => String::from_utf8_lossy(&body).into_owned(),
        _ => String::new(),
    };
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let generation = value("komugate_policy_generation").unwrap_or(0.0);
    let failed = value("komugate_policy_reloads_total{result=\"error\"}").unwrap_or(0.0);
    let detail = format!(
        "{addr}: 応答あり / healthy; ポリシー世代 / policy generation {generation}, 失敗した再読み込み / failed reloads {failed}"
    );
    let check = if failed > 0.0 {
        Check::new("gateway", subject, Status::Warn)
            .detail(detail)
            .fix("監査ログで失敗した再読み込みの理由を確認; 前の世代で動作中 / the audit log says why a reload failed; the previous generation is still in force")
    } else {
        Check::new("gateway", subject, Status::Ok).detail(detail)
    };
    report.push(check);
}

/// ClickHouse: the server answers, the credentials work and the access
/// log table exists (the same client the shipper uses).
pub async fn clickhouse(config: &Config, report: &mut Report) {
    let target = config.log.clickhouse.clone();
    if !target.enabled {
        report.push(
            Check::new("clickhouse", "ClickHouse", Status::Skip)
                .detail("[log.clickhouse] enabled = false"),
        );
        return;
    }
    let subject = format!("ClickHouse {}", target.url);
    let result = tokio::task::spawn_blocking(move || {
        let client = crate::logs::clickhouse::Client::new(&target)?;
        let (major, minor) = client.version()?;
        let exists = client.query(&format!("EXISTS TABLE {}", client.access()))?;
        Ok::<_, String>((major, minor, client.access(), exists.trim() == "1"))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let check = match result {
        Ok((major, minor, table, true)) => Check::new("clickhouse", subject, Status::Ok)
            .detail(format!("version {major}.{minor}, {table} あり / exists")),
        Ok((major, minor, table, false)) => Check::new("clickhouse", subject, Status::Warn)
            .detail(format!("version {major}.{minor}; {table} がありません / does not exist"))
            .fix("create_table = true でゲートウェイを起動すると作成されます / the gateway creates it at start with create_table = true"),
        Err(e) => Check::new("clickhouse", subject, Status::Fail)
            .detail(e)
            .fix("ClickHouse の起動、[log.clickhouse] url・user・パスワード、NetworkPolicy を確認 / check that ClickHouse runs, the url, user and password, and the NetworkPolicy"),
    };
    report.push(check);
}

/// SMTP: connect, STARTTLS (required, verified) and log in as an alert
/// mail would; no mail is sent.
pub async fn smtp(config: &Config, report: &mut Report) {
    let c = &config.alerts;
    if c.smtp_host.is_empty() {
        report.push(
            Check::new("smtp", "メール / SMTP", Status::Skip)
                .detail("[alerts] smtp_host がありません / not configured"),
        );
        return;
    }
    let subject = format!("メール / SMTP {}:{}", c.smtp_host, c.smtp_port);
    let read = |p: &str| std::fs::read_to_string(config.data_path(std::path::Path::new(p)));
    let result = match crate::alerts::Mailer::new(c, read) {
        Ok(Some(mailer)) => mailer.test_connection().await,
        Ok(None) => Ok(()),
        Err(e) => Err(format!("{e:#}")),
    };
    report.push(match result {
        Ok(()) => Check::new("smtp", subject, Status::Ok)
            .detail("STARTTLS とログイン成功 (メールは送っていません) / STARTTLS and login succeeded (no mail sent)"),
        Err(e) => Check::new("smtp", subject, Status::Fail)
            .detail(e)
            .fix("[alerts] smtp_host・smtp_port・smtp_ca・認証情報を確認 / check smtp_host, smtp_port, smtp_ca and the credentials"),
    });
}

/// The alert webhook: resolved, allowed by the destination guard, and a
/// verified TLS handshake, through the gateway's own egress. Nothing is
/// posted (a test message would reach the staff's channel).
pub async fn webhook(
    config: &Config,
    egress: &Egress,
    tls: Arc<rustls::ClientConfig>,
    report: &mut Report,
) {
    let url = &config.alerts.webhook_url;
    if url.is_empty() {
        report.push(
            Check::new("webhook", "Webhook", Status::Skip)
                .detail("[alerts] webhook_url がありません / not configured"),
        );
        return;
    }
    let result = async {
        let u = Url::parse(url)?;
        let tcp = egress
            .connect(&u.host, u.port, None)
            .await
            .map_err(|e| e.to_string())?;
        if u.https {
            http::tls(tcp, &u.host, tls).await?;
            Ok("TLS 接続成功 (送信はしていません) / TLS handshake verified (nothing posted)")
        } else {
            Ok::<_, String>(
                "TCP 接続成功 (送信はしていません) / TCP connection made (nothing posted)",
            )
        }
    }
    .await;
    let subject = format!("Webhook {}", redact_query(url));
    report.push(match result {
        Ok(what) => Check::new("webhook", subject, Status::Ok).detail(what),
        Err(e) => Check::new("webhook", subject, Status::Fail)
            .detail(e)
            .fix("URL、DNS、[egress] allow_destinations、上流の CA ([inspect] upstream_ca) を確認 / check the URL, DNS, allow_destinations and the upstream CA"),
    });
}

/// Webhook URLs carry their secret in the path or query: show the host only.
fn redact_query(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => format!(
            "{}://{}/…",
            if u.https { "https" } else { "http" },
            u.authority()
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

/// A TLS client that accepts exactly the configured server certificate
/// (the admin listener presents it, whatever CA issued it).
fn pinned_client(config: &Config) -> Result<Arc<rustls::ClientConfig>, String> {
    let path = config.data_path(&config.tls.server_cert);
    let pinned = crate::pki::load_certs(&path)
        .map_err(|e| format!("[tls] server_cert {}: {e:#}", path.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("[tls] server_cert {}: no certificate", path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert { pinned, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedCert {
    pinned: rustls_pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the admin listener does not present [tls] server_cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
