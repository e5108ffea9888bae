//! The `flyt` command-line tool.

fn main() {
    std::process::exit(flyt_pipelines::cli::main());
}
