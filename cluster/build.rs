// Generate the mesh code from ../proto in pure Rust (protox): no protoc is
// needed on a fresh machine (see design.md, build facts).
fn main() {
    println!("cargo:rerun-if-changed=../proto/cluster.proto");
    let fds =
        protox::compile(["cluster.proto"], ["../proto"]).expect("compile proto/cluster.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generate tonic code");
}
