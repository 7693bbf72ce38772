//! Stopping a statement's work at its deadline, or when its module closed the cursor.
//!
//! Dropping a statement's stream cancels the engine's tasks only at their next yield, and an
//! operator fed by another that is always ready (an aggregate over a cross join of a table in
//! memory) may run for minutes inside one poll, holding one of the engine's threads from every
//! other statement. So every operator's input passes through [`Stoppable`], which ends it with
//! an error once the statement is over: the operator consuming it stops at its next batch.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures_util::StreamExt;

/// When a statement is over.
#[derive(Debug)]
pub(super) struct Stop {
    pub(super) deadline: Instant,
    /// Set when the module closes its cursor.
    pub(super) closed: Arc<AtomicBool>,
}

/// Why a statement is over before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Over {
    Closed,
    Deadline,
}

impl Stop {
    pub(super) fn over(&self) -> Option<Over> {
        if self.closed.load(Ordering::Relaxed) {
            Some(Over::Closed)
        } else if Instant::now() >= self.deadline {
            Some(Over::Deadline)
        } else {
            None
        }
    }
}

/// `plan` with the input of every operator passed through [`Stoppable`].
pub(super) fn stoppable(plan: Arc<dyn ExecutionPlan>, stop: &Arc<Stop>) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan.children();
    if children.is_empty() {
        return Ok(plan);
    }
    let wrapped = children
        .into_iter()
        .map(|child| {
            let input = stoppable(child.clone(), stop)?;
            Ok(Arc::new(Stoppable { input, stop: stop.clone() }) as Arc<dyn ExecutionPlan>)
        })
        .collect::<Result<Vec<_>>>()?;
    // The wrappers have their inputs' properties: the plan's own stay as planned.
    plan.replace_children(wrapped, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))
}

/// Its input's batches until the statement is over, then an error.
#[derive(Debug)]
struct Stoppable {
    input: Arc<dyn ExecutionPlan>,
    stop: Arc<Stop>,
}

impl DisplayAs for Stoppable {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stoppable")
    }
}

impl ExecutionPlan for Stoppable {
    fn name(&self) -> &str {
        "Stoppable"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] =
            <[_; 1]>::try_from(children).map_err(|_| DataFusionError::Internal("Stoppable has one input".into()))?;
        Ok(Arc::new(Stoppable { input, stop: self.stop.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let stop = self.stop.clone();
        let batches = input.map(move |batch| {
            if stop.over().is_some() { Err(DataFusionError::Execution("the statement is over".into())) } else { batch }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}
