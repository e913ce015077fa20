//! Accounts that fall into arrears: after N model calls (`--arrears-after N`) or when told
//! to by `POST /__emulator/arrears?account=NAME` mid-run. An account in arrears is refused
//! every model call and every getPolicy with the configured stop code (400 `Arrearage` by
//! default, or one of the billing 429s), until `POST /__emulator/arrears?account=NAME&paid=true`.
//!
//! Deliberately per account, not per key: billing belongs to the account.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::emulator::errors::{ApiError, BillingStop};

#[derive(Debug, Default)]
struct Bill {
    calls: u64,
    arrears: bool,
}

#[derive(Debug)]
pub struct Billing {
    after: Option<u64>,
    stop: BillingStop,
    /// False until anything could put an account in arrears, so the usual run takes no lock.
    armed: AtomicBool,
    /// One entry per account that made a model call (with `after` set) or was named by the
    /// control endpoint; the lock is held for a lookup and an increment.
    bills: Mutex<HashMap<String, Bill>>,
}

impl Billing {
    pub fn new(after: Option<u64>, stop: BillingStop) -> Self {
        Self {
            after,
            stop,
            armed: AtomicBool::new(after.is_some()),
            bills: Mutex::new(HashMap::new()),
        }
    }

    fn refusal(&self) -> ApiError {
        ApiError::billing(self.stop)
    }

    /// A model call: counts it, and refuses it if the account is (or now falls) in arrears.
    /// Call `after` + 1 is the first refused.
    pub fn charge(&self, account: &str) -> Result<(), ApiError> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut bills = self.bills.lock().unwrap_or_else(|p| p.into_inner());
        let bill = bills.entry(account.to_owned()).or_default();
        if !bill.arrears {
            bill.calls += 1;
            if self.after.is_some_and(|after| bill.calls > after) {
                bill.arrears = true;
            }
        }
        if bill.arrears {
            Err(self.refusal())
        } else {
            Ok(())
        }
    }

    /// Any other request of the account (getPolicy): refused in arrears, never counted.
    pub fn check(&self, account: &str) -> Result<(), ApiError> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let bills = self.bills.lock().unwrap_or_else(|p| p.into_inner());
        match bills.get(account) {
            Some(bill) if bill.arrears => Err(self.refusal()),
            _ => Ok(()),
        }
    }

    /// The control endpoint: puts `account` in arrears, or (paid) clears it and starts its
    /// call count again.
    pub fn set(&self, account: &str, arrears: bool) {
        self.armed.store(true, Ordering::Relaxed);
        let mut bills = self.bills.lock().unwrap_or_else(|p| p.into_inner());
        let bill = bills.entry(account.to_owned()).or_default();
        bill.arrears = arrears;
        if !arrears {
            bill.calls = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_into_arrears_after_n_calls_and_recovers_when_paid() {
        let billing = Billing::new(Some(2), BillingStop::Arrearage);
        assert!(billing.charge("a").is_ok());
        assert!(billing.check("a").is_ok());
        assert!(billing.charge("a").is_ok());
        let err = billing.charge("a").expect_err("third call");
        assert_eq!(err.code, "Arrearage");
        assert!(billing.check("a").is_err());
        assert!(billing.charge("b").is_ok(), "per account");
        billing.set("a", false);
        assert!(billing.charge("a").is_ok());
    }

    #[test]
    fn control_endpoint_alone_arms_it() {
        let billing = Billing::new(None, BillingStop::PrepaidBillOverdue);
        assert!(billing.charge("a").is_ok());
        billing.set("a", true);
        let err = billing.check("a").expect_err("in arrears");
        assert_eq!(err.status.as_u16(), 429);
        assert_eq!(err.code, "PrepaidBillOverdue");
    }
}
