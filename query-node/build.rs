//! Generates the connector admin service (`proto/kyma/admin/v1/admin.proto`).

fn main() -> std::io::Result<()> {
    let proto = "../proto/kyma/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &["../proto"])
}
