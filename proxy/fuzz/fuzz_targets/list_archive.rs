//! Downloaded category lists (`[[categories.source]]` with format
//! `squidguard`): the tar / tar.gz archive is unpacked with the gateway's
//! checks (no `..`, absolute paths, links or devices, a size cap), then
//! imported as a squidGuard tree (plain or gzip list files, split parts).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use komugate::list_update::unpack;
use komugate_categories::MatcherBuilder;
use libfuzzer_sys::fuzz_target;

/// A scratch directory for the process (removed with it by the OS's tmp
/// cleaning; each run clears its own files).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_path_buf();
        (dir, path)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let base = scratch();
    let archive = base.join("download");
    let dest = base.join("staging");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).expect("staging directory");
    std::fs::write(&archive, data).expect("archive file");
    if unpack(&archive, &dest, 1 << 20).is_ok() {
        // Nothing may land outside the staging directory.
        for entry in std::fs::read_dir(base).expect("scratch directory") {
            let name = entry.expect("entry").file_name();
            assert!(
                name == "download" || name == "staging",
                "the archive wrote {name:?} outside the staging directory"
            );
        }
        let mut builder = MatcherBuilder::new();
        if builder.add_squidguard_dir(&dest, None).is_ok() {
            let _ = builder.build();
        }
    }
});
