//! The e-mail channel: SMTP submission with STARTTLS required (lettre), one
//! mail per message to every recipient.

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};

use super::Message;
use crate::config::AlertsConfig;

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl Mailer {
    /// `None` when no SMTP server is configured. Errors name the setting.
    pub fn new(
        c: &AlertsConfig,
        read: impl Fn(&str) -> std::io::Result<String>,
    ) -> anyhow::Result<Option<Mailer>> {
        if c.smtp_host.is_empty() {
            return Ok(None);
        }
        let mut tls = TlsParameters::builder(c.smtp_host.clone());
        if !c.smtp_ca.is_empty() {
            let pem = read(&c.smtp_ca)
                .map_err(|e| anyhow::anyhow!("[alerts] smtp_ca {}: {e}", c.smtp_ca))?;
            let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                anyhow::anyhow!("[alerts] smtp_ca {}: not a PEM certificate: {e}", c.smtp_ca)
            })?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| anyhow::anyhow!("[alerts] smtp_host {}: {e}", c.smtp_host))?;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.smtp_host.clone())
                .port(c.smtp_port)
                .tls(Tls::Required(tls))
                .timeout(Some(std::time::Duration::from_secs(20)));
        if !c.smtp_username.is_empty() {
            let password = read(&c.smtp_password_file).map_err(|e| {
                anyhow::anyhow!("[alerts] smtp_password_file {}: {e}", c.smtp_password_file)
            })?;
            builder = builder.credentials(Credentials::new(
                c.smtp_username.clone(),
                password.trim_end().to_string(),
            ));
        }
        let mailbox = |what: &str, s: &str| {
            s.parse::<lettre::message::Mailbox>()
                .map_err(|e| anyhow::anyhow!("[alerts] {what} {s:?} is not a mail address: {e}"))
        };
        Ok(Some(Mailer {
            transport: builder.build(),
            from: mailbox("smtp_from", &c.smtp_from)?,
            to: c
                .smtp_to
                .iter()
                .map(|t| mailbox("smtp_to", t))
                .collect::<anyhow::Result<_>>()?,
        }))
    }

    /// Connects, says EHLO, starts TLS and logs in (when configured), then
    /// quits: what a send would do, without a mail (`komugate doctor`).
    pub async fn test_connection(&self) -> Result<(), String> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("the server did not answer NOOP".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn send(&self, msg: &Message) -> Result<(), String> {
        let mut mail = Mail::builder()
            .from(self.from.clone())
            .subject(msg.subject())
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            mail = mail.to(to.clone());
        }
        let mail = mail
            .body(msg.text())
            .map_err(|e| format!("cannot build the mail: {e}"))?;
        self.transport
            .send(mail)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}
