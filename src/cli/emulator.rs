//! `dashbatch emulator`: flags → [`crate::emulator`] config, then serve until a signal.

use std::net::SocketAddr;

#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on. Port 0 picks a free port; the chosen address is printed.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
}

pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "the emulator is not built yet (asked to listen on {})",
        args.listen
    )
}
