//! Prints the podvault CRDs as YAML (`cargo run -p podvault-controller --bin crdgen >
//! deploy/crds/crds.yaml`).

fn main() -> anyhow::Result<()> {
    print!("{}", podvault_controller::crds_yaml()?);
    Ok(())
}
