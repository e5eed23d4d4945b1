//! Console sign-in through a real OpenID provider (npm `oidc-provider`
//! over HTTPS on 127.0.0.2, see support/oidc_provider.rs). An HTTP client
//! walks the provider's own login and consent forms like a browser, so the
//! test holds each redirect in hand: groups mapped to roles, a person in no
//! mapped group refused, replayed / foreign / forged callbacks and a
//! replayed code refused and counted, the provider's key rotation followed,
//! every step audited with the person's name. Forged tokens (signature,
//! iss, aud, times, nonce, alg) are unit tests in proxy/src/oidc/verify.rs.

use komugate_tests::console::ConsoleClient;
use komugate_tests::gw::TestGateway;
use komugate_tests::oidc_provider::{free_port, IdpClient, OidcProvider, ProviderSetup};
use komugate_tests::within;

const CLIENT_ID: &str = "komugate-console";
const CLIENT_SECRET: &str = "a-client-secret-for-tests-only-0123";

fn setup(admin_port: u16) -> ProviderSetup {
    ProviderSetup {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uri: format!("http://127.0.0.1:{admin_port}/console/oidc/callback"),
        accounts: serde_json::json!({
            "hanako": {"name": "山田 花子", "preferred_username": "hanako@board.test",
                       "groups": ["teachers", "komugate-admins"]},
            "taro": {"name": "佐藤 太郎", "groups": ["komugate-viewers"]},
            "mallory": {"name": "Mallory", "groups": ["students"]},
        }),
        ..Default::default()
    }
}

/// A gateway whose console signs in through `provider`.
async fn gateway_with_provider(
    provider: &OidcProvider,
    admin_port: u16,
    secret_file: &str,
) -> TestGateway {
    let setup = setup(admin_port);
    TestGateway::start(|c, _| {
        c.listen.admin = format!("127.0.0.1:{admin_port}");
        std::fs::write(c.data.dir.join("oidc-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
        c.admin.oidc = Some(provider.console_config(&setup, secret_file));
    })
    .await
}

/// One person's browser: the console side and the provider side.
struct Person {
    console: ConsoleClient,
    idp: IdpClient,
}

impl Person {
    fn new(gw: &TestGateway, provider: &OidcProvider) -> Person {
        Person {
            console: ConsoleClient::plain(gw.admin()),
            idp: IdpClient::new(provider),
        }
    }

    /// Starts a console sign-in and goes through the provider's login (as
    /// `login`, when asked) and consent pages; the console callback URL the
    /// provider sends back to (path and query), not yet opened.
    async fn through_provider(&mut self, login: &str) -> String {
        let start = self.console.get("/console/oidc/start").await;
        assert_eq!(start.status, 303, "{}", start.text());
        let binding = start
            .set_cookies()
            .into_iter()
            .find(|c| c.starts_with("komugate_oidc="))
            .expect("a binding cookie");
        assert!(
            binding.contains("HttpOnly") && binding.contains("SameSite=Lax"),
            "{binding}"
        );
        let url = start.location().unwrap();
        assert!(url.starts_with(&format!("{}/", self.idp.origin)), "{url}");
        for needle in [
            "code_challenge_method=S256",
            "code_challenge=",
            "nonce=",
            "state=",
        ] {
            assert!(url.contains(needle), "{needle} in {url}");
        }
        let console = format!("http://127.0.0.1:{}", self.console.addr.port());
        let back = self.idp.walk(&url, login, &console, None).await;
        back.strip_prefix(&console)
            .expect("the provider sent back to the console")
            .to_string()
    }

    /// Signs in all the way; the page the callback answers.
    async fn sign_in(&mut self, login: &str) -> komugate_tests::console::Page {
        let callback = self.through_provider(login).await;
        self.console.get(&callback).await
    }
}

fn audit_events(gw: &TestGateway) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir.path().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect()
}

#[tokio::test]
async fn sign_in_through_a_real_openid_provider() {
    let admin_port = free_port();
    let setup = setup(admin_port);
    let mut provider = OidcProvider::start(&setup).await;
    let gw = gateway_with_provider(&provider, admin_port, "oidc-secret").await;
    within("OpenID Connect sign-in", async {
        // The sign-in page offers the provider.
        let mut hanako = Person::new(&gw, &provider);
        let form = hanako.console.get("/console/signin").await;
        assert!(
            form.text().contains("Entra ID でサインイン")
                && form.text().contains("/console/oidc/start"),
            "{}",
            form.text()
        );

        // An admin by group: the callback starts a session and moves on to
        // the dashboard from the console's own page (the session cookie is
        // SameSite=Strict: a redirect chain started at the provider would
        // not carry it).
        let callback = hanako.through_provider("hanako").await;
        let done = hanako.console.get(&callback).await;
        assert_eq!(done.status, 200, "{}", done.text());
        assert!(
            done.text().contains("http-equiv=\"refresh\"")
                && done.visible().contains("/console/dashboard"),
            "{}",
            done.text()
        );
        let session = done
            .set_cookies()
            .into_iter()
            .find(|c| c.starts_with("komugate_session="))
            .expect("a session cookie");
        assert!(
            session.contains("HttpOnly") && session.contains("SameSite=Strict"),
            "{session}"
        );
        let d = hanako.console.get("/console/dashboard").await;
        assert_eq!(d.status, 200);
        assert!(d.text().contains("山田 花子 (管理者)"), "{}", d.text());
        assert_eq!(
            hanako.console.get("/console/audit").await.status,
            200,
            "admin page"
        );

        // The same callback again (a replayed code and state): refused.
        let p = hanako.console.get(&callback).await;
        assert_eq!(p.status, 401);
        assert!(
            p.text().contains("このサインインは無効です"),
            "{}",
            p.text()
        );

        // A callback delivered to another browser (no binding cookie; the
        // provider remembers hanako, so no login page this time): refused,
        // and the state is spent.
        let callback2 = hanako.through_provider("hanako").await;
        let mut other = ConsoleClient::plain(gw.admin());
        let p = other.get(&callback2).await;
        assert_eq!(p.status, 401, "{}", p.text());
        assert!(!other.cookies.contains_key("komugate_session"));
        assert_eq!(
            hanako.console.get(&callback2).await.status,
            401,
            "used once"
        );

        // A code already redeemed, under a fresh state of this browser:
        // the provider refuses it at the token endpoint.
        let callback3 = hanako.through_provider("hanako").await;
        let old_code = query_param(&callback, "code");
        let new_state = query_param(&callback3, "state");
        let forged = format!(
            "/console/oidc/callback?code={}&state={}",
            komugate::oidc::pct(&old_code),
            komugate::oidc::pct(&new_state)
        );
        let p = hanako.console.get(&forged).await;
        assert_eq!(p.status, 401, "{}", p.text());
        assert!(
            p.text().contains("サインインに失敗しました"),
            "{}",
            p.text()
        );
        // An invented state.
        let p = hanako
            .console
            .get("/console/oidc/callback?code=x&state=invented")
            .await;
        assert_eq!(p.status, 401);

        // Sign-out, audited with the name.
        let csrf = hanako
            .console
            .get("/console/dashboard")
            .await
            .field("csrf")
            .unwrap();
        assert_eq!(
            hanako
                .console
                .post("/console/signout", &[("csrf", &csrf)])
                .await
                .status,
            303
        );

        // A viewer by group: looks, but may not open an operator page.
        let mut taro = Person::new(&gw, &provider);
        assert_eq!(taro.sign_in("taro").await.status, 200);
        let d = taro.console.get("/console/dashboard").await;
        assert!(d.text().contains("佐藤 太郎 (閲覧者)"), "{}", d.text());
        let p = taro.console.get("/console/explain").await;
        assert_eq!(p.status, 403);
        assert!(p.text().contains("「運用担当」以上の権限が必要です"));

        // In no mapped group: refused, in Japanese, with the name.
        let mut mallory = Person::new(&gw, &provider);
        let p = mallory.sign_in("mallory").await;
        assert_eq!(p.status, 403, "{}", p.text());
        assert!(
            p.text()
                .contains("Mallory さんは、このコンソールの利用を認められたグループに入っていない")
                && p.text().contains("students"),
            "{}",
            p.text()
        );
        assert!(!mallory.console.cookies.contains_key("komugate_session"));

        // The provider rotates its signing key: the console fetches the
        // new key set for the unknown kid and signs people in as before.
        let old_kid = provider.kid.clone();
        provider.rotate_keys(&setup);
        assert_ne!(provider.kid, old_kid);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let mut again = Person::new(&gw, &provider);
        let p = again.sign_in("hanako").await;
        assert_eq!(p.status, 200, "after the key rotation: {}", p.text());
        assert_eq!(again.console.get("/console/dashboard").await.status, 200);
    })
    .await;

    let refused = |reason: &str| {
        gw.metric(
            "komugate_oidc_refused_total",
            &[("use", "console"), ("reason", reason)],
        )
    };
    assert_eq!(refused("unknown_state"), 3.0, "{}", gw.metrics());
    assert_eq!(refused("other_browser"), 1.0);
    assert_eq!(refused("token_endpoint"), 1.0);
    assert_eq!(refused("no_role"), 1.0);
    assert_eq!(
        gw.metric("komugate_oidc_accepted_total", &[("use", "console")]),
        3.0
    );

    let events = audit_events(&gw);
    let has = |user: &str, action: &str, reason: &str| {
        events.iter().any(|e| {
            e["type"] == "console_session"
                && e["user"] == user
                && e["action"] == action
                && e["reason"].as_str().unwrap_or("").contains(reason)
        })
    };
    assert!(
        has(
            "山田 花子",
            "sign_in",
            "role admin from group komugate-admins"
        ),
        "{events:#?}"
    );
    assert!(has("山田 花子", "sign_out", ""));
    assert!(has("佐藤 太郎", "sign_in", "role viewer"));
    assert!(has("Mallory", "sign_in_refused", "groups: students"));
    assert!(has("(OpenID Connect)", "sign_in_failed", "replayed"));
    assert!(has("(OpenID Connect)", "sign_in_failed", "invalid_grant"));
    let report = komugate::logs::audit::verify(&gw.dir.path().join("audit.log")).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    gw.shutdown().await;
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {url}"));
    komugate::console::form::Params::parse(&format!("v={raw}"))
        .get("v")
        .unwrap()
        .to_string()
}

/// A configuration mistake is named at start, and the sign-in page says
/// sign-in through the provider cannot start.
#[tokio::test]
async fn a_missing_client_secret_is_a_clear_error() {
    let admin_port = free_port();
    let provider = OidcProvider::start(&setup(admin_port)).await;
    let gw = gateway_with_provider(&provider, admin_port, "no-such-secret").await;
    let mut c = ConsoleClient::plain(gw.admin());
    let p = c.get("/console/oidc/start").await;
    assert_eq!(p.status, 503);
    assert!(
        p.text()
            .contains("組織のアカウントでのサインインを開始できません")
            && p.text().contains("client_secret_file")
            && p.text().contains("no-such-secret"),
        "{}",
        p.text()
    );
    gw.shutdown().await;
}
