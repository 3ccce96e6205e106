//! One client per connection per run, whatever the engine role that asks for it.
//!
//! A connection may be the source of an export and of a copy in one plan; both must
//! share one client, so the server's capabilities are probed once and the connection
//! pool is one. Engines keep their own client types; this cache holds them by
//! connection name and type, without knowing what they are.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::task::TaskFailure;

/// The clients of one run, by connection and client type.
#[derive(Default)]
pub struct Clients {
    open: Mutex<HashMap<(String, TypeId), Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.open.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Clients").field("open", &open).finish()
    }
}

impl Clients {
    /// The client of type `C` of `connection`, opened by `open` the first time.
    pub fn get_or_open<C: Clone + Send + Sync + 'static>(
        &self,
        connection: &str,
        open: impl FnOnce() -> Result<C, TaskFailure>,
    ) -> Result<C, TaskFailure> {
        let key = (connection.to_string(), TypeId::of::<C>());
        let mut clients = self.open.lock().expect("client cache lock");
        if let Some(client) = clients.get(&key).and_then(|c| c.downcast_ref::<C>()) {
            return Ok(client.clone());
        }
        let client = open()?;
        clients.insert(key, Arc::new(client.clone()));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_opened_once_per_client_type() {
        let clients = Clients::default();
        let mut opened = 0;
        let a: String = clients
            .get_or_open("ch", || {
                opened += 1;
                Ok("first".to_string())
            })
            .unwrap();
        let b: String = clients
            .get_or_open("ch", || {
                opened += 1;
                Ok("second".to_string())
            })
            .unwrap();
        assert_eq!((a.as_str(), b.as_str(), opened), ("first", "first", 1));
        // Another type, or another connection, is another client.
        let n: u32 = clients.get_or_open("ch", || Ok(7)).unwrap();
        let other: String = clients.get_or_open("ch2", || Ok("x".into())).unwrap();
        assert_eq!((n, other.as_str()), (7, "x"));
        // A failed open caches nothing.
        let failed: Result<u64, _> =
            clients.get_or_open("down", || Err(TaskFailure::permanent("refused")));
        assert!(failed.is_err());
        let later: u64 = clients.get_or_open("down", || Ok(1)).unwrap();
        assert_eq!(later, 1);
    }
}
