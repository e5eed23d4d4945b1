/// mimalloc instead of glibc malloc: the data path allocates and frees many
/// small buffers across worker threads, where glibc spent ~7 % of the
/// proxy's CPU (profile of the plain-forward load test).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    komugate::cli::main()
}
