//! The in-memory keys (MODE0, MODE16) in an allocation of their own: on huge
//! pages where the kernel gives them, locked into RAM where permitted (never
//! written to swap), and overwritten with zeros when dropped.
//!
//! MODE16's 65,536 precomputed keys take 5 MiB and each MAC reads one at random.
//! With 4 KiB pages nearly every such read also misses the TLB, and a page walk
//! under a hypervisor costs more than the MAC; 2 MiB pages cover the table with
//! three TLB entries.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::collections::HashMap;
use std::ops::Deref;
use std::ptr::NonNull;

use crate::mac::PrecomputedKey;
use crate::sys;

const HUGE_PAGE: usize = 2 << 20;

/// The MODE0/MODE16 keys, and each namespace's keys derived from them (the
/// derivation costs more than a MAC, so it is done once, at startup).
pub struct InMemoryKeys {
    pub default: KeyTable,
    pub namespaces: HashMap<String, KeyTable>,
}

impl InMemoryKeys {
    /// The keys of `namespace`, or the mode's own.
    ///
    /// # Panics
    /// For a namespace the keys were not loaded with.
    pub fn of(&self, namespace: Option<&str>) -> &KeyTable {
        namespace.map_or(&self.default, |namespace| {
            self.namespaces
                .get(namespace)
                .expect("the keys are loaded with every client's namespace")
        })
    }
}

pub struct KeyTable {
    keys: NonNull<PrecomputedKey>,
    len: usize,
    layout: Layout,
}

// SAFETY: KeyTable owns its keys like a Box<[PrecomputedKey]>, and
// PrecomputedKey is Send and Sync.
unsafe impl Send for KeyTable {}
// SAFETY: as for Send; shared access only reads the keys.
unsafe impl Sync for KeyTable {}

impl KeyTable {
    pub fn new(keys: impl ExactSizeIterator<Item = PrecomputedKey>) -> KeyTable {
        let len = keys.len();
        let size = std::mem::size_of::<PrecomputedKey>() * len.max(1);
        // Only a table of at least one huge page is worth aligning to them, and
        // then it fills whole ones: a partly used huge page is made of small ones.
        let (size, align) = if size >= HUGE_PAGE {
            (size.next_multiple_of(HUGE_PAGE), HUGE_PAGE)
        } else {
            (size, std::mem::align_of::<PrecomputedKey>())
        };
        let layout = Layout::from_size_align(size, align).expect("the table's size is small");
        // SAFETY: the layout has a non-zero size.
        let Some(start) = NonNull::new(unsafe { alloc(layout) }.cast::<PrecomputedKey>()) else {
            handle_alloc_error(layout)
        };
        if align == HUGE_PAGE {
            // Advice only: before the first write, so the pages are huge from the start.
            // SAFETY: the range is the allocation just made, aligned to a page.
            unsafe { sys::advise_huge_pages(start.as_ptr().cast(), size) };
        }
        let mut written = 0;
        for key in keys.take(len) {
            // SAFETY: `written < len`, inside the allocation, and not yet initialised.
            unsafe { start.add(written).write(key) };
            written += 1;
        }
        assert_eq!(written, len, "the iterator yields as many keys as it said");
        // SAFETY: the range is the allocation just made.
        if let Err(error) = unsafe { sys::lock_in_memory(start.as_ptr().cast(), size) } {
            tracing::warn!(
                bytes = size,
                %error,
                "cannot lock the keys into memory; they could be swapped out. Raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK)"
            );
        }
        KeyTable {
            keys: start,
            len,
            layout,
        }
    }
}

impl Deref for KeyTable {
    type Target = [PrecomputedKey];

    fn deref(&self) -> &[PrecomputedKey] {
        // SAFETY: `len` keys were written at `keys` and live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.keys.as_ptr(), self.len) }
    }
}

impl Drop for KeyTable {
    fn drop(&mut self) {
        // SAFETY: as in `deref`, and `&mut self` is the only reference.
        let keys = unsafe { std::slice::from_raw_parts_mut(self.keys.as_ptr(), self.len) };
        for key in keys {
            key.zeroize();
        }
        // SAFETY: allocated in `new` with this layout; PrecomputedKey needs no drop.
        unsafe { dealloc(self.keys.as_ptr().cast(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_keys_in_order_at_any_size() {
        for count in [0, 1, 3, 65_536] {
            let keys = (0..count).map(|index: u32| {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&index.to_le_bytes());
                key
            });
            let table = KeyTable::new(keys.clone().map(|key| PrecomputedKey::new(&key)));
            assert_eq!(table.len(), count as usize);
            for (held, key) in table.iter().zip(keys).step_by(997) {
                assert_eq!(
                    held.mac(b"message"),
                    PrecomputedKey::new(&key).mac(b"message")
                );
            }
        }
    }

    #[test]
    fn a_large_table_is_aligned_for_huge_pages() {
        let table = KeyTable::new((0..65_536).map(|_| PrecomputedKey::new(&[7; 32])));
        assert_eq!(table.as_ptr() as usize % HUGE_PAGE, 0);
    }
}
