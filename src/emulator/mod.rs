//! TEMPORARY signature stub of the emulator contract, replaced by the real emulator on merge.
#![allow(dead_code, unused_variables, clippy::all)]
#[derive(Default)]
pub struct EmulatorConfig;
pub struct Running;
impl Running {
    pub fn base_url(&self) -> String {
        todo!()
    }
    pub async fn shutdown(self) {}
}
pub async fn spawn(config: EmulatorConfig) -> std::io::Result<Running> {
    todo!()
}
