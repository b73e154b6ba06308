//! `sql` block (being written).

use crate::config::Config;
use crate::contract::{Fields, TaskError};

use super::{Block, ExecCtx, Output};

#[derive(Debug)]
pub struct FsBlock {}

impl FsBlock {
    pub fn new(_config: &Config) -> Result<Self, String> {
        Ok(Self {})
    }
}

impl Block for FsBlock {
    type Job<'a> = ();

    fn decode<'a>(&self, _job: Fields<'a, 'a>, _ctx: &ExecCtx<'_>) -> Result<(), TaskError> {
        Err(TaskError::internal("not implemented yet"))
    }

    async fn attempt(&self, _job: &Self::Job<'_>, _ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        Err(TaskError::internal("not implemented yet"))
    }
}
