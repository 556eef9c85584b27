//! The example apps every host serves by default.

pub mod alarm;
pub mod books;
pub mod counter;
