#!/usr/bin/env node
// Validates the custom resources (Prometheus Operator, External Secrets, Argo CD) in rendered
// manifests against the schemas shipped by the npm `kubernetes-models` packages. Core objects
// are skipped here (kubernetes-validate checks them); an unknown custom kind is an error.
//
//   node scripts/validate-crds.mjs --modules DIR/node_modules FILE.yaml...
//   node scripts/validate-crds.mjs --modules DIR/node_modules --expect-invalid FILE.yaml...
//
// Caveat: these schemas do not forbid unknown fields, so a misspelt optional field passes; wrong
// types, enums, patterns and missing required fields fail.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let modules = null;
let expectInvalid = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--modules") modules = args[++i];
  else if (args[i] === "--expect-invalid") expectInvalid = true;
  else files.push(args[i]);
}
if (!modules || files.length === 0) {
  console.error("usage: validate-crds.mjs --modules NODE_MODULES [--expect-invalid] FILE...");
  process.exit(2);
}

const MODELS = {
  "monitoring.coreos.com/v1": ["@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1", ["ServiceMonitor", "PrometheusRule", "PodMonitor"]],
  "external-secrets.io/v1": ["@kubernetes-models/external-secrets/external-secrets.io/v1", ["ExternalSecret", "SecretStore", "ClusterSecretStore"]],
  "argoproj.io/v1alpha1": ["@kubernetes-models/argo-cd/argoproj.io/v1alpha1", ["Application", "AppProject", "ApplicationSet"]],
};
const CORE_GROUPS = new Set(["v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "batch/v1"]);

const yaml = (await import(pathToFileURL(join(modules, "js-yaml", "dist", "js-yaml.mjs")).href)).default;

async function modelFor(apiVersion, kind) {
  const entry = MODELS[apiVersion];
  if (!entry || !entry[1].includes(kind)) return null;
  const mod = await import(pathToFileURL(join(modules, entry[0], `${kind}.js`)).href);
  return mod[kind];
}

let checked = 0;
let failures = 0;
for (const file of files) {
  const docs = yaml.loadAll(readFileSync(file, "utf8")).filter(Boolean);
  for (const doc of docs) {
    const id = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    if (CORE_GROUPS.has(doc.apiVersion)) continue;
    const Model = await modelFor(doc.apiVersion, doc.kind);
    if (!Model) {
      console.log(`FAIL ${id}: no schema for ${doc.apiVersion} ${doc.kind}`);
      failures++;
      continue;
    }
    checked++;
    try {
      new Model(doc).validate();
      if (expectInvalid) {
        console.log(`FAIL ${id}: expected a validation error, got none`);
        failures++;
      } else {
        console.log(`ok   ${id} (${doc.apiVersion})`);
      }
    } catch (e) {
      const detail = (e.errors ?? []).map((x) => `${x.instancePath || "/"} ${x.message ?? x.keyword} ${JSON.stringify(x.params ?? {})}`).join("; ");
      if (expectInvalid) {
        console.log(`ok   ${id}: rejected as expected (${detail || e.message})`);
      } else {
        console.log(`FAIL ${id}: ${detail || e.message}`);
        failures++;
      }
    }
  }
}
console.log(`${checked} custom resources checked, ${failures} failed`);
process.exit(failures === 0 && checked > 0 ? 0 : 1);
