//! The `aip` binary: parse arguments, call the library, turn the outcome into an exit code.

fn main() -> std::process::ExitCode {
    aip::cli::main()
}
