//! The topic set: explicit topics and templates expanded from the org, split into channel shards.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::genesys::rest::{GenesysClient, RestError};
use crate::genesys::wire::NamedEntity;
use crate::secret::Secret;

/// Genesys allows 1,000 topics per channel.
pub const MAX_TOPICS_PER_CHANNEL: usize = 1000;
/// Genesys allows 20 channels per user and OAuth client; the 21st evicts the oldest.
pub const MAX_CHANNELS: usize = 20;

/// Where a template's `{id}` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntitySource {
    Queues,
    Users,
}

impl EntitySource {
    pub fn path(self) -> &'static str {
        match self {
            EntitySource::Queues => "/api/v2/routing/queues",
            EntitySource::Users => "/api/v2/users",
        }
    }

    /// The source a template names: `…queues.{id}…` or `…users.{id}…`.
    pub fn of_template(template: &str) -> Option<Self> {
        if template.contains("queues.{id}") {
            Some(EntitySource::Queues)
        } else if template.contains("users.{id}") {
            Some(EntitySource::Users)
        } else {
            None
        }
    }
}

/// A topic template expanded for every queue or user of the org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicTemplate {
    /// E.g. `v2.routing.queues.{id}.conversations` or `v2.users.{id}.conversations`.
    pub template: String,
    /// Only entities whose name matches this glob (`*` any characters, case-insensitive).
    #[serde(default)]
    pub name: Option<String>,
    /// Only entities in these divisions (names or ids). Empty: all divisions.
    #[serde(default)]
    pub divisions: Vec<String>,
}

impl TopicTemplate {
    pub fn source(&self) -> Option<EntitySource> {
        EntitySource::of_template(&self.template)
    }

    fn selects(&self, entity: &NamedEntity) -> bool {
        let name_ok = self.name.as_deref().is_none_or(|pattern| {
            glob_match(
                &pattern.to_lowercase(),
                &entity.name.clone().unwrap_or_default().to_lowercase(),
            )
        });
        let division_ok = self.divisions.is_empty()
            || entity.division.as_ref().is_some_and(|division| {
                self.divisions.iter().any(|wanted| {
                    division.id.as_deref() == Some(wanted.as_str())
                        || division.name.as_deref() == Some(wanted.as_str())
                })
            });
        name_ok && division_ok
    }
}

/// `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(index) => rest = &rest[index + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Expands templates against the org and adds explicit topics. Sorted, without duplicates.
pub async fn expand(
    client: &GenesysClient,
    token: &Secret,
    explicit: &[String],
    templates: &[TopicTemplate],
) -> Result<BTreeSet<String>, RestError> {
    let mut topics: BTreeSet<String> = explicit.iter().cloned().collect();
    let mut listed: HashMap<EntitySource, Vec<NamedEntity>> = HashMap::new();
    for template in templates {
        let Some(source) = template.source() else {
            continue; // refused by config validation
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = listed.entry(source) {
            slot.insert(client.list_all(token, source.path()).await?);
        }
        for entity in &listed[&source] {
            if template.selects(entity) {
                topics.insert(template.template.replace("{id}", &entity.id));
            }
        }
    }
    Ok(topics)
}

/// The topic set needs more channels than allowed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{topics} topics need {needed} channels of at most {per_channel} topics, but the channel budget is {budget} (Genesys allows 20 per OAuth client; a 21st silently evicts the oldest). Narrow the templates, or use a second OAuth client for a second bridge")]
pub struct TooManyChannels {
    pub topics: usize,
    pub needed: usize,
    pub per_channel: usize,
    pub budget: usize,
}

/// Splits `topics` into shards of at most `per_channel`, keeping every topic that stays in the
/// shard it was in (`previous`), so that adding a queue touches one shard, not all of them.
pub fn assign_shards(
    previous: &[Vec<String>],
    topics: &BTreeSet<String>,
    per_channel: usize,
    budget: usize,
) -> Result<Vec<Vec<String>>, TooManyChannels> {
    let per_channel = per_channel.clamp(1, MAX_TOPICS_PER_CHANNEL);
    let needed = topics.len().div_ceil(per_channel).max(1);
    if needed > budget {
        return Err(TooManyChannels {
            topics: topics.len(),
            needed,
            per_channel,
            budget,
        });
    }
    let mut shards: Vec<Vec<String>> = previous
        .iter()
        .map(|shard| {
            shard
                .iter()
                .filter(|t| topics.contains(*t))
                .cloned()
                .collect()
        })
        .collect();
    let placed: BTreeSet<&String> = shards.iter().flatten().collect();
    let new: Vec<String> = topics
        .iter()
        .filter(|t| !placed.contains(t))
        .cloned()
        .collect();
    for topic in new {
        match shards.iter_mut().find(|s| s.len() < per_channel) {
            Some(shard) => shard.push(topic),
            None => shards.push(vec![topic]),
        }
    }
    // Emptied shards at the end are dropped; ones in the middle keep their number.
    while shards.len() > 1 && shards.last().is_some_and(Vec::is_empty) {
        shards.pop();
    }
    if shards.is_empty() {
        shards.push(Vec::new());
    }
    if shards.len() > budget {
        // Stable placement fragmented the shards: repack from scratch.
        return assign_shards(&[], topics, per_channel, budget);
    }
    Ok(shards)
}

/// How often the templates are expanded again.
pub fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(range: std::ops::Range<usize>) -> BTreeSet<String> {
        range
            .map(|n| format!("v2.routing.queues.q{n:05}.conversations"))
            .collect()
    }

    #[test]
    fn splits_into_channels_and_respects_the_budget() {
        let shards = assign_shards(&[], &set(0..2500), 1000, 20).unwrap();
        assert_eq!(
            shards.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        let error = assign_shards(&[], &set(0..20_001), 1000, 20).unwrap_err();
        assert_eq!(error.needed, 21);
        assert!(error.to_string().contains("21 channels"));
    }

    #[test]
    fn new_topics_do_not_move_old_ones() {
        let first = assign_shards(&[], &set(0..25), 10, 20).unwrap();
        let mut grown = set(0..25);
        grown.insert("v2.routing.queues.a-first.conversations".into());
        grown.remove("v2.routing.queues.q00003.conversations");
        let second = assign_shards(&first, &grown, 10, 20).unwrap();
        assert_eq!(second[1], first[1], "untouched shard stays identical");
        assert!(second[0].contains(&"v2.routing.queues.a-first.conversations".to_string()));
        assert_eq!(second.iter().map(Vec::len).sum::<usize>(), 25);
    }

    #[test]
    fn templates_know_their_source_and_filters() {
        assert_eq!(
            EntitySource::of_template("v2.routing.queues.{id}.conversations"),
            Some(EntitySource::Queues)
        );
        assert_eq!(
            EntitySource::of_template("v2.users.{id}.conversations"),
            Some(EntitySource::Users)
        );
        assert_eq!(EntitySource::of_template("v2.system.x"), None);
        assert!(glob_match("sales*", "sales emea"));
        assert!(glob_match("*emea*", "sales emea tier 1"));
        assert!(!glob_match("support*", "sales"));
    }
}
