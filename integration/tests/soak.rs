//! The soak (issue 9), not part of the default test run (`test = false` in integration/Cargo.toml): 5 hosts with
//! gossip and an encrypted network rekeyed every 30 s, 2 % random loss on every host's underlay, and endpoint churn
//! (every 2 s `weft attach` of a new namespace on one host, then `weft detach` of the one it replaces) for 10
//! minutes. It must end with no false death (every host's membership sampled every ~250 ms), no lost endpoint (every
//! attached one in every other host's table), no stale one (every detached one gone from every table within 10 s)
//! and a flat RSS; the convergence of new endpoints is measured and reported (p50/p99).
//!
//! ```text
//! scripts/soak.sh                          # builds weft, runs this for 10 minutes
//! WEFT_SOAK_SECS=120 scripts/soak.sh       # shorter
//! WEFT_SOAK_CHURN=mac scripts/soak.sh      # churn by new MACs instead (old ones time out after 300 s)
//! ```

use std::time::Duration;

use anyhow::{bail, Result};
use weft_integration::reliability::{check_churn_report, churn_under_loss, AttachChurn, Churn, ChurnOptions, MacChurn};

fn churn() -> Result<Box<dyn Churn>> {
    match std::env::var("WEFT_SOAK_CHURN").as_deref() {
        Err(_) | Ok("attach") => Ok(Box::new(AttachChurn::default())),
        Ok("mac") => Ok(Box::new(MacChurn::default())),
        Ok(other) => bail!("WEFT_SOAK_CHURN={other}: expected attach (the default) or mac"),
    }
}

#[test]
#[ignore = "needs root: run scripts/soak.sh"]
fn soak() -> Result<()> {
    let secs: u64 = match std::env::var("WEFT_SOAK_SECS") {
        Ok(s) => s.parse().map_err(|e| anyhow::anyhow!("WEFT_SOAK_SECS={s}: {e}"))?,
        Err(_) => 600,
    };
    let options = ChurnOptions {
        hosts: 5,
        containers: 2,
        loss_pct: 2,
        duration: Duration::from_secs(secs),
        change_every: Duration::from_secs(2),
        control: vec!["rekey_secs = 30".to_owned(), "rekey_grace_secs = 10".to_owned()],
    };
    let mut churn = churn()?;
    let report = churn_under_loss("rlsoak", &options, churn.as_mut())?;
    let expected_rekeys = secs / 30;
    if report.rekeys < expected_rekeys.saturating_sub(2) {
        bail!("host 1 rekeyed {} times in {secs} s with rekey_secs = 30", report.rekeys);
    }
    // The soak's own promises are no false death, no lost endpoint and a flat RSS; convergence is reported, and
    // only held to the 10 s a single change may take (the 1 s p99 is the 2-minute loss test's assertion).
    check_churn_report(&format!("soak, {secs} s"), &report, Duration::from_secs(10), 256 << 10, 16 << 10)
}
