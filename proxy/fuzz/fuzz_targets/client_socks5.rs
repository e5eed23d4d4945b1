//! The `komugate client` SOCKS5 listener: greeting and CONNECT request,
//! delivered in input-chosen chunks.
#![no_main]

use komugate::client::local::socks_request;
use komugate_fuzz::{runtime, split_plan, ChunkedStream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((plan, input)) = split_plan(data, 2) else {
        return;
    };
    let mut stream = ChunkedStream::new(input, plan);
    if let Ok(Some((host, _port))) = runtime().block_on(socks_request(&mut stream)) {
        // What goes on to the gateway as a CONNECT target is never empty
        // and never carries characters that could split a request.
        assert!(!host.is_empty());
        assert!(!host.contains(['\r', '\n', ' ', '/', '@']), "{host:?}");
    }
});
