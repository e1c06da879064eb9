// The metric names each PromQL expression selects, parsed with Prometheus's own grammar
// (@prometheus-io/lezer-promql, package.json): the Identifier of every VectorSelector (inside
// matrix selectors and subqueries too). Function, aggregation and label names are other nodes.
// Reads a JSON array of expressions on stdin; prints a JSON array with, for each, the sorted
// names, or {"error": ...} when it does not parse or selects by __name__ (which this cannot name).
// Used by tests/integration/test_alert_coverage.py and test_deploy_rules.py.
import { readFileSync } from "node:fs";
import { parser } from "@prometheus-io/lezer-promql";

const expressions = JSON.parse(readFileSync(0, "utf8"));
const results = expressions.map((expr) => {
  const names = new Set();
  let error = null;
  parser.parse(expr).iterate({
    enter(node) {
      if (node.type.isError) error ??= `does not parse at offset ${node.from}: ${expr}`;
      if (node.name === "VectorSelector") {
        const first = node.node.firstChild;
        if (first && first.name === "Identifier") names.add(expr.slice(first.from, first.to));
        else error ??= `a selector without a metric name: ${expr.slice(node.from, node.to)}`;
      }
    },
  });
  return error ? { error } : [...names].sort();
});
process.stdout.write(JSON.stringify(results));
