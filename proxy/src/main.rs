fn main() -> std::process::ExitCode {
    komugate::cli::main()
}
