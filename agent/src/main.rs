//! The `podvault` binary.

fn main() -> std::process::ExitCode {
    podvault::cli::main()
}
