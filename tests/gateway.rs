//! komugate gateway integration tests: real sockets on 127.0.0.0/8, real
//! TLS, a local DNS server.

use komugate_tests::gw::TestGateway;
use komugate_tests::raw;
use komugate_tests::upstream::HttpUpstream;

#[tokio::test]
async fn smoke_plain_get() {
    let gw = TestGateway::start(|_, _| {}).await;
    let up = HttpUpstream::start("127.0.0.1").await;
    let r = raw::proxy_get(gw.plain(), &format!("http://{}/x", up.addr)).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "hello from upstream /x");
    gw.shutdown().await;
}
