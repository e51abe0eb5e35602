// client_js's own rules, beside the type check (`make check-js`: tsc on the JSDoc types, with
// client_js/tsconfig.json): each module says `// @ts-check` first, so editors check it too, and no
// statement hides behind the comma operator, in the modules or in these tests.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLIENT_JS = path.dirname(HERE);
const MODULES = readdirSync(CLIENT_JS).filter((name) => name.endsWith(".js")).map((name) => path.join(CLIENT_JS, name));
const TESTS = readdirSync(HERE).filter((name) => name.endsWith(".mjs")).map((name) => path.join(HERE, name));

test("every module starts with // @ts-check", () => {
  assert.ok(MODULES.length >= 2, MODULES.join(", "));
  const unchecked = MODULES.filter((file) => !readFileSync(file, "utf8").startsWith("// @ts-check\n"));
  assert.deepEqual(unchecked, []);
});

test("no comma operator (a for loop's increments aside)", () => {
  const found = [];
  for (const file of [...MODULES, ...TESTS]) {
    const source = ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true);
    const visit = (node) => {
      const comma = ts.isBinaryExpression(node) && node.operatorToken.kind === ts.SyntaxKind.CommaToken;
      if (comma && !(ts.isForStatement(node.parent) && node.parent.incrementor === node)) {
        const { line } = source.getLineAndCharacterOfPosition(node.getStart(source));
        found.push(`${path.relative(CLIENT_JS, file)}:${line + 1}: ${node.getText(source)}`);
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  assert.deepEqual(found, []);
});
