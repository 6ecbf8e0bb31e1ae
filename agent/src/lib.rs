//! podvault engine
