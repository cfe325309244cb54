fn main() {
    std::process::exit(kproxy::cli::main());
}
