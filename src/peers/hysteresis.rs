//! Rise/fall hysteresis for a peer's health: a flapping peer must not flap DNS answers with it.

/// Good polls in a row before a down peer counts as up.
pub const RISE: u32 = 2;
/// Bad polls in a row before an up peer counts as down.
pub const FALL: u32 = 3;

/// Starts down: a peer proves itself before machines are sent to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    up: bool,
    /// Consecutive polls that disagree with `up`.
    streak: u32,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one poll; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { FALL } else { RISE };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(polls: &[bool]) -> Vec<bool> {
        let mut h = Health::default();
        polls
            .iter()
            .map(|&ok| {
                h.observe(ok);
                h.is_up()
            })
            .collect()
    }

    #[test]
    fn rises_after_two_good_and_falls_after_three_bad() {
        let t = true;
        let f = false;
        assert_eq!(run(&[t, t]), [f, t]);
        assert_eq!(run(&[t, t, f, f, f]), [f, t, t, t, f]);
        // a single bad poll between good ones changes nothing
        assert_eq!(run(&[t, t, f, t, f, f, t]), [f, t, t, t, t, t, t]);
        // a single good poll while down changes nothing either
        assert_eq!(run(&[t, f, t, f]), [f, f, f, f]);
    }

    #[test]
    fn reports_only_changes() {
        let mut h = Health::default();
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
    }
}
