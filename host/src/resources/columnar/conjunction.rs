//! Filters of several conditions (`a AND b AND c`), evaluated condition by condition over the
//! whole batch instead of the engine's nested pairs.
//!
//! The engine evaluates `(a AND b) AND c` as pairs, and when the left side selects under a fifth
//! of the rows it first copies every column of the batch down to those rows, evaluates the
//! right side there, and scatters the answer back run by run. On data whose matching rows are
//! spread out (an analyst's date range over unsorted order lines) the copying and scattering
//! cost several times the comparisons themselves: most of a filtered sum's time. Here each
//! condition is compared over the whole batch (a vectorized kernel over one or two columns)
//! and the answers are combined bit by bit; only when few rows are left (under 1 in
//! [`SPARSE`]) are the remaining conditions evaluated on those rows alone, where copying is
//! cheap and a costly condition (a pattern match, a function) runs on little.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::boolean::and_kleene;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, internal_datafusion_err};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::split_conjunction;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

/// Below one row in this many still selected, the remaining conditions run on those rows only.
const SPARSE: usize = 32;

/// The planner's last step: every filter of two or more conditions evaluates them as
/// [`AllOf`].
#[derive(Debug, Default)]
pub(super) struct FlattenFilters;

impl PhysicalOptimizerRule for FlattenFilters {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else { return Ok(Transformed::no(node)) };
            let conjuncts = split_conjunction(filter.predicate());
            if conjuncts.len() < 2 || filter.predicate().is::<AllOf>() {
                return Ok(Transformed::no(node));
            }
            let all = AllOf { conjuncts: conjuncts.into_iter().cloned().collect() };
            let flat = FilterExecBuilder::from(filter).with_predicate(Arc::new(all)).build()?;
            Ok(Transformed::yes(Arc::new(flat) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "roam_flatten_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A filter's conditions, all of which a row must meet. Only a filter's predicate: a row
/// for which a condition is null is dropped, as one for which it is false, and the answer for
/// such a row may be either.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct AllOf {
    conjuncts: Vec<Arc<dyn PhysicalExpr>>,
}

impl fmt::Display for AllOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.conjuncts.iter().enumerate() {
            write!(f, "{}{c}", if i == 0 { "" } else { " AND " })?;
        }
        Ok(())
    }
}

impl PhysicalExpr for AllOf {
    fn data_type(&self, _: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, schema: &Schema) -> Result<bool> {
        self.conjuncts.iter().try_fold(false, |any, c| Ok(any || c.nullable(schema)?))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let rows = batch.num_rows();
        let mut mask: Option<BooleanArray> = None;
        for (i, conjunct) in self.conjuncts.iter().enumerate() {
            if let Some(mask) = &mask {
                let selected = mask.true_count();
                if selected == 0 {
                    break;
                }
                if selected * SPARSE < rows {
                    let rest = AllOf { conjuncts: self.conjuncts[i..].to_vec() };
                    let few = rest.evaluate(&filter_record_batch(batch, mask)?)?.into_array(selected)?;
                    return Ok(ColumnarValue::Array(Arc::new(scatter(mask, boolean(&few)?))));
                }
            }
            let value = conjunct.evaluate(batch)?.into_array(rows)?;
            let value = boolean(&value)?;
            mask = Some(match mask {
                None => value.clone(),
                Some(mask) => and_kleene(&mask, value)?,
            });
        }
        let all = mask.unwrap_or_else(|| BooleanArray::from(vec![true; rows]));
        Ok(ColumnarValue::Array(Arc::new(all)))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.conjuncts.iter().collect()
    }

    fn with_new_children(self: Arc<Self>, conjuncts: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(AllOf { conjuncts }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.conjuncts.iter().enumerate() {
            f.write_str(if i == 0 { "" } else { " AND " })?;
            c.fmt_sql(f)?;
        }
        Ok(())
    }
}

fn boolean(array: &Arc<dyn Array>) -> Result<&BooleanArray> {
    array.as_boolean_opt().ok_or_else(|| internal_datafusion_err!("a filter's condition is not a boolean"))
}

/// The whole batch's answer from `few`, the answers for the rows `mask` selects (true and not
/// null), in order; every other row is false.
fn scatter(mask: &BooleanArray, few: &BooleanArray) -> BooleanArray {
    let mut out = BooleanBufferBuilder::new(mask.len());
    out.append_n(mask.len(), false);
    let selected = match mask.nulls() {
        Some(valid) => mask.values() & valid.inner(),
        None => mask.values().clone(),
    };
    for (j, row) in selected.set_indices().enumerate() {
        if few.is_valid(j) && few.value(j) {
            out.set_bit(row, true);
        }
    }
    BooleanArray::new(out.finish(), None)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::Field;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
    use datafusion::scalar::ScalarValue;

    use super::*;

    /// `column < bound`, on the batch's column `at`.
    fn less(column: &str, at: usize, bound: i64) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(
            Arc::new(Column::new(column, at)),
            Operator::Lt,
            Arc::new(Literal::new(ScalarValue::Int64(Some(bound)))),
        ))
    }

    /// The rows of 0..n meeting every condition, evaluated by [`AllOf`] and one by one.
    fn both(n: i64, bounds: &[(usize, i64)]) -> Result<(Vec<bool>, Vec<bool>)> {
        let a: Int64Array = (0..n).map(|i| if i % 17 == 3 { None } else { Some(i * 7919 % 1000) }).collect();
        let b: Int64Array = (0..n).map(|i| Some(i * 104_729 % 1000)).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(a.clone()), Arc::new(b.clone())])?;
        let conjuncts: Vec<_> = bounds.iter().map(|&(at, bound)| less(["a", "b"][at], at, bound)).collect();
        let got = AllOf { conjuncts }.evaluate(&batch)?.into_array(n as usize)?;
        let got = got.as_boolean();
        let keep = (0..n as usize).map(|i| got.is_valid(i) && got.value(i)).collect();
        let cols = [&a, &b];
        let want = (0..n as usize)
            .map(|i| bounds.iter().all(|&(at, bound)| cols[at].is_valid(i) && cols[at].value(i) < bound))
            .collect();
        Ok((keep, want))
    }

    #[test]
    fn all_of_keeps_the_rows_meeting_every_condition() -> Result<()> {
        // Dense throughout, sparse after the first condition (1 in 100), and none left.
        for bounds in [vec![(0, 500), (1, 700), (0, 300)], vec![(0, 10), (1, 500), (1, 900)], vec![(1, 0), (0, 999)]] {
            let (got, want) = both(20_000, &bounds)?;
            assert_eq!(got, want, "{bounds:?}");
        }
        Ok(())
    }
}
