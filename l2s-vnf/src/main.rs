//! The `l2s-vnf` binary: everything is in [`l2s_vnf::cli`].

fn main() -> std::process::ExitCode {
    l2s_vnf::cli::main()
}
