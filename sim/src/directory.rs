//! The org's directory: routing queues and users (agents), with deterministic ids.

use std::collections::HashMap;

use rand::rngs::SmallRng;
use serde::Serialize;

use crate::ids;

/// A division reference as Genesys embeds it in entities.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DivisionRef {
    pub id: String,
    pub name: String,
    pub self_uri: String,
}

/// A routing queue (the fields of the SDK's `Queue` that the simulator fills in).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Queue {
    pub id: String,
    pub name: String,
    pub division: DivisionRef,
    pub description: String,
    pub date_created: String,
    pub member_count: usize,
    pub joined_member_count: usize,
    pub self_uri: String,
}

/// A user (the fields of the SDK's `User` that the simulator fills in).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub username: String,
    pub state: String,
    pub division: DivisionRef,
    pub version: u32,
    pub self_uri: String,
}

pub(crate) struct Directory {
    pub queues: Vec<Queue>,
    pub users: Vec<User>,
    queue_index: HashMap<String, usize>,
    user_index: HashMap<String, usize>,
    /// Queues no longer listed by `GET /api/v2/routing/queues` (see [`Directory::delist_queue`]).
    delisted: std::collections::HashSet<String>,
    division: DivisionRef,
    agents_per_queue: usize,
    rng: SmallRng,
}

impl Directory {
    pub fn new(seed: u64, queues: usize, agents: usize) -> Self {
        let mut rng = ids::rng_for(seed, ids::Stream::Directory);
        let division_id = ids::uuid(&mut rng);
        let division = DivisionRef {
            self_uri: format!("/api/v2/authorization/divisions/{division_id}"),
            id: division_id,
            name: "Home".to_owned(),
        };
        let mut dir = Directory {
            queues: Vec::new(),
            users: Vec::new(),
            queue_index: HashMap::new(),
            user_index: HashMap::new(),
            delisted: Default::default(),
            division,
            agents_per_queue: agents,
            rng,
        };
        for n in 1..=agents {
            let id = ids::uuid(&mut dir.rng);
            let user = User {
                self_uri: format!("/api/v2/users/{id}"),
                name: format!("Agent {n:04}"),
                email: format!("agent{n:04}@sim.example.com"),
                username: format!("agent{n:04}@sim.example.com"),
                state: "active".to_owned(),
                division: dir.division.clone(),
                version: 1,
                id,
            };
            dir.user_index.insert(user.id.clone(), dir.users.len());
            dir.users.push(user);
        }
        for n in 1..=queues {
            dir.add_queue(&format!("Queue {n:03}"));
        }
        dir
    }

    /// Adds a queue at runtime and returns its id.
    pub fn add_queue(&mut self, name: &str) -> String {
        let id = ids::uuid(&mut self.rng);
        let queue = Queue {
            self_uri: format!("/api/v2/routing/queues/{id}"),
            name: name.to_owned(),
            division: self.division.clone(),
            description: format!("Simulated queue {name}"),
            date_created: "2024-01-01T00:00:00.000Z".to_owned(),
            member_count: self.agents_per_queue,
            joined_member_count: self.agents_per_queue,
            id: id.clone(),
        };
        self.queue_index.insert(id.clone(), self.queues.len());
        self.queues.push(queue);
        id
    }

    /// Stops listing a queue (as if it were deleted from the org's directory); the
    /// conversation model and subscriptions still know it. True if it was listed.
    pub fn delist_queue(&mut self, id: &str) -> bool {
        self.queue_index.contains_key(id) && self.delisted.insert(id.to_owned())
    }

    /// The queues `GET /api/v2/routing/queues` lists.
    pub fn listed_queues(&self) -> Vec<&Queue> {
        self.queues
            .iter()
            .filter(|q| !self.delisted.contains(&q.id))
            .collect()
    }

    pub fn has_queue(&self, id: &str) -> bool {
        self.queue_index.contains_key(id)
    }

    pub fn has_user(&self, id: &str) -> bool {
        self.user_index.contains_key(id)
    }

    pub fn division_id(&self) -> &str {
        &self.division.id
    }
}

/// A page of a list, shaped like the SDK's `*EntityListing`.
pub(crate) fn page<T: Serialize>(
    items: &[T],
    page_size: usize,
    page_number: usize,
    base_path: &str,
) -> serde_json::Value {
    let total = items.len();
    let page_count = total.div_ceil(page_size);
    let start = (page_number - 1).saturating_mul(page_size).min(total);
    let end = start.saturating_add(page_size).min(total);
    let uri = |n: usize| format!("{base_path}?pageSize={page_size}&pageNumber={n}");
    let mut body = serde_json::json!({
        "entities": &items[start..end],
        "pageSize": page_size,
        "pageNumber": page_number,
        "total": total,
        "pageCount": page_count,
        "firstUri": uri(1),
        "selfUri": uri(page_number),
        "lastUri": uri(page_count.max(1)),
    });
    if page_number < page_count {
        body["nextUri"] = serde_json::Value::String(uri(page_number + 1));
    }
    if page_number > 1 {
        body["previousUri"] = serde_json::Value::String(uri(page_number - 1));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_directory_and_paging() {
        let a = Directory::new(7, 3, 5);
        let b = Directory::new(7, 3, 5);
        assert_eq!(a.queues[2].id, b.queues[2].id);
        assert_eq!(a.users.len(), 5);
        let p = page(&a.users, 2, 3, "/api/v2/users");
        assert_eq!(p["entities"].as_array().unwrap().len(), 1);
        assert_eq!(p["pageCount"], 3);
        assert_eq!(p["total"], 5);
        assert!(p.get("nextUri").is_none());
        let p = page(&a.users, 2, 9, "/api/v2/users");
        assert_eq!(p["entities"].as_array().unwrap().len(), 0);
    }
}
