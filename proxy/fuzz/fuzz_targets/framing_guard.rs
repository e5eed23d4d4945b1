//! The HTTP/1.1 request-smuggling guard: a keep-alive byte stream of heads
//! and bodies, delivered in input-chosen chunks, through `FramingGuard`.
#![no_main]

use komugate::listen::framing_guard::FramingGuard;
use komugate_fuzz::{runtime, split_plan, ChunkedStream};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    // Byte 0: head size limit; bytes 1..4: read sizes.
    let Some((plan, input)) = split_plan(data, 4) else {
        return;
    };
    let max_head = 64 + plan[0] as usize * 64;
    let stream = ChunkedStream::new(input, &plan[1..]);
    let mut guard = FramingGuard::new(stream, max_head);
    let mut out = Vec::new();
    runtime()
        .block_on(guard.read_to_end(&mut out))
        .expect("an in-memory stream never fails");
});
