//! Genesys Cloud: endpoints, REST client and wire types.

pub mod endpoints;
pub mod rest;
pub mod wire;
