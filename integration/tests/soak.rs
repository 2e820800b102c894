//! The soak (issue 9), not part of the default test run (`test = false` in integration/Cargo.toml): 5 hosts with
//! gossip and an encrypted network rekeyed every 30 s, 2 % random loss on every host's underlay, and endpoint churn
//! (one new endpoint every 2 s; the one it replaces goes silent) for 10 minutes. It must end with no false death
//! (every host's membership sampled every ~250 ms), no lost endpoint (every live one in every other host's table),
//! no stale one (those silent past weft's 300 s timeout gone everywhere) and a flat RSS; the convergence of new
//! endpoints is measured and reported (p50/p99).
//!
//! ```text
//! scripts/soak.sh                          # builds weft, runs this for 10 minutes
//! WEFT_SOAK_SECS=120 scripts/soak.sh       # shorter
//! ```
//!
//! Churn is pluggable ([`Churn`]): today a container takes a new MAC and sends (`WEFT_SOAK_CHURN=mac`, the
//! default); once `weft attach`/`weft detach` exist, an attach/detach churn is added to `churn()` below.

use std::time::Duration;

use anyhow::{bail, Result};
use weft_integration::reliability::{check_churn_report, churn_under_loss, Churn, ChurnOptions, MacChurn};

fn churn() -> Result<Box<dyn Churn>> {
    match std::env::var("WEFT_SOAK_CHURN").as_deref() {
        Err(_) | Ok("mac") => Ok(Box::new(MacChurn::default())),
        Ok("attach") => bail!("WEFT_SOAK_CHURN=attach: weft attach/detach do not exist yet (issue 7)"),
        Ok(other) => bail!("WEFT_SOAK_CHURN={other}: expected mac (or attach, once it exists)"),
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
