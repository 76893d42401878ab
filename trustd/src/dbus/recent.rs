//! A map of bus names bounded in size that keeps the names in use: the service's memory of
//! callers (who a unique name is), which a flood of new names must not wipe.

use std::collections::HashMap;

/// Entries keyed by unique bus name, at most `cap` per generation and two generations: when
/// the current generation is full it becomes the old one and the old one is forgotten; an
/// entry found in the old generation moves back to the current one. So a name looked up at
/// least once per generation (a long-lived connection that keeps calling, root's included)
/// stays known however many new names pass, while names no longer seen (connections opened
/// and closed by a flood) are forgotten after two generations. Memory: at most `2 * cap`
/// entries.
#[derive(Debug)]
pub struct Recent<V> {
    now: HashMap<String, V>,
    old: HashMap<String, V>,
    cap: usize,
}

impl<V> Recent<V> {
    /// An empty map of at most `cap` entries per generation.
    pub fn new(cap: usize) -> Self {
        Self {
            now: HashMap::new(),
            old: HashMap::new(),
            cap,
        }
    }

    /// The entry of `name`, moved to the current generation if it was in the old one.
    pub fn get(&mut self, name: &str) -> Option<&V> {
        if !self.now.contains_key(name)
            && let Some(v) = self.old.remove(name)
        {
            self.insert(name.to_owned(), v);
        }
        self.now.get(name)
    }

    /// The entry of `name`, inserting `make()` if there is none (see [`Recent::get`]).
    pub fn get_or_insert_with(&mut self, name: &str, make: impl FnOnce() -> V) -> &V {
        if self.get(name).is_none() {
            self.insert(name.to_owned(), make());
        }
        self.now.get(name).expect("just inserted")
    }

    /// Set the entry of `name` (in the current generation, which turns old first if full).
    pub fn insert(&mut self, name: String, v: V) {
        if self.now.len() >= self.cap && !self.now.contains_key(&name) {
            self.old = std::mem::take(&mut self.now);
        }
        self.old.remove(&name);
        self.now.insert(name, v);
    }

    /// Forget `name`.
    pub fn remove(&mut self, name: &str) {
        self.now.remove(name);
        self.old.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    /// Regression (connection churn): the caches of who a name is were cleared whenever 4096
    /// names had been seen, so a churning user made root's long-lived bus connection unknown
    /// again every few seconds and its calls were held or dropped like a stranger's. A name
    /// in use stays; names not seen again are forgotten; memory stays bounded.
    #[test]
    fn a_name_in_use_outlives_a_flood_of_new_names() {
        let mut r = Recent::new(4);
        r.insert(":1.root".to_owned(), 0u32);
        for n in 0..1000 {
            r.insert(format!(":9.{n}"), n);
            if n % 3 == 0 {
                assert_eq!(r.get(":1.root"), Some(&0), "after {n} new names");
            }
            assert!(r.now.len() + r.old.len() <= 8, "two generations at most");
        }
        assert_eq!(r.get(":9.0"), None, "a name not seen again is forgotten");
        assert_eq!(r.get(":9.999"), Some(&999));
        r.remove(":9.999");
        assert_eq!(r.get(":9.999"), None);
        assert_eq!(*r.get_or_insert_with(":2.1", || 7), 7);
        assert_eq!(*r.get_or_insert_with(":2.1", || 8), 7);
    }
}
