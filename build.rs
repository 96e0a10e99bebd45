//! Compiles the OCluster worker schema (schema/ocluster.capnp) with `capnp` (Debian's
//! `capnproto` package, installed by scripts/setup) into `$OUT_DIR/ocluster_capnp.rs`.

fn main() {
    println!("cargo:rerun-if-changed=schema/ocluster.capnp");
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/ocluster.capnp")
        .default_parent_module(vec!["worker".into()])
        .run()
    {
        panic!("compiling schema/ocluster.capnp (is the capnp compiler installed? scripts/setup installs it): {e}");
    }
}
