//! SIGHUP reloads the policy. Its own test binary: the signal goes to the
//! whole process, so no other gateway may share it.

use std::time::Duration;

use komugate_tests::gw::TestGateway;

#[tokio::test]
async fn sighup_reloads_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[[rule]]\nname = \"one\"\nhosts = [\"one.test\"]\naction = \"block\"\n",
    )
    .unwrap();
    let path = policy.display().to_string();
    let gw = TestGateway::start(move |c, _| {
        c.policy.file = path;
        c.policy.watch = false;
    })
    .await;
    let blocked = |host: &'static str| {
        let plain = gw.plain();
        async move {
            komugate_tests::raw::proxy_get(plain, &format!("http://{host}/"))
                .await
                .unwrap()
                .status
                == 403
        }
    };
    assert!(blocked("one.test").await);
    assert!(!blocked("two.test").await);
    std::fs::write(
        &policy,
        "version = 1\n[[rule]]\nname = \"two\"\nhosts = [\"two.test\"]\naction = \"block\"\n",
    )
    .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    komugate_tests::eventually(Duration::from_secs(5), || {
        let g = gw.metric("komugate_policy_generation", &[]);
        async move { (g >= 2.0).then_some(()) }
    })
    .await
    .expect("SIGHUP reloaded the policy");
    assert!(blocked("two.test").await);
    assert!(!blocked("one.test").await);
    // A broken file on SIGHUP is refused; generation 2 stays.
    std::fs::write(&policy, "version = 1\n[[rule]]\nname = 3\n").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    komugate_tests::eventually(Duration::from_secs(5), || {
        let e = gw.metric("komugate_policy_reloads_total", &[("result", "error")]);
        async move { (e >= 1.0).then_some(()) }
    })
    .await
    .expect("the broken file was tried and refused");
    assert_eq!(gw.metric("komugate_policy_generation", &[]), 2.0);
    assert!(blocked("two.test").await);
    gw.shutdown().await;
}
