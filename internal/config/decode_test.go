package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const head = "app: shop\nrepo: git@example.com:acme/shop.git\ndeploy_to: /srv/shop\n"

// mustParse parses src and fails the test on an error.
func mustParse(t *testing.T, src string) *File {
	t.Helper()
	f, err := Parse("drover.yml", []byte(src))
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	return f
}

// configError returns the first *Error of err, failing the test when err is
// not a config error.
func configError(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	var es Errors
	switch {
	case err == nil:
		t.Fatal("no error")
	case errors.As(err, &es):
		return es[0]
	case errors.As(err, &e):
		return e
	}
	t.Fatalf("error %T is not a *config.Error: %v", err, err)
	return nil
}

// TestQuotedKeysAreKeys: a quoted key means what the plain key means; no
// hook written "prepare": [...] is dropped.
func TestQuotedKeysAreKeys(t *testing.T) {
	plain := head + `hooks:
  prepare: [echo build]
  migrate: {when: before_activate, run_once: true, role: db, commands: [./migrate]}
  after_activate: [./purge]
environments:
  prod: {hosts: [{host: web1, roles: [web, db]}]}
`
	quoted := head + `"hooks":
  "prepare": [echo build]
  'migrate': {"when": before_activate, 'run_once': true, "role": db, "commands": [./migrate]}
  "after\u005factivate": [./purge]
"environments":
  'prod': {"hosts": [{"host": web1, roles: [web, db]}]}
`
	want, got := mustParse(t, plain), mustParse(t, quoted)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("quoted keys decode differently:\n got  %+v order %v\n want %+v order %v", got.Hooks, got.HookOrder, want.Hooks, want.HookOrder)
	}
	if n := len(got.HooksFor(StagePrepare)) + len(got.HooksFor(StageBeforeActivate)) + len(got.HooksFor(StageAfterActivate)); n != 3 {
		t.Errorf("%d of 3 quoted hooks would run (order %v)", n, got.HookOrder)
	}
	// Tagged and explicit (?) keys are keys too.
	odd := mustParse(t, head+"hooks:\n  !!str prepare: [echo build]\n  ? after_activate\n  : [./purge]\nenvironments:\n  prod: {hosts: [{host: web1}]}\n")
	if got := strings.Join(odd.HookOrder, ","); got != "prepare,after_activate" {
		t.Errorf("tagged and explicit keys: hook order %q", got)
	}
	// A quoted hook is validated like a plain one.
	_, err := Parse("drover.yml", []byte(head+"hooks:\n  \"purge\": [./purge]\nenvironments:\n  prod: {hosts: [{host: web1}]}\n"))
	if e := configError(t, err); e.Line != 5 || !strings.Contains(e.Msg, "has no stage") {
		t.Errorf("quoted hook without a stage: %v", err)
	}
}

// TestMergeKeys: << merges a mapping (or a list of them) as YAML says:
// keys written next to << win, earlier mappings in a list win over later
// ones, and merged hooks run in the order they appear at the << line.
func TestMergeKeys(t *testing.T) {
	src := head + `hooks:
  prepare: [echo build]
  <<:
    - migrate: {run_once: true, role: db, commands: [./migrate]}
      after_activate: [echo merged]
      warm: {when: after_activate, commands: [./warm]}
    - warm: {when: prepare, commands: [./never]}
  after_activate: [echo explicit]
environments:
  staging: &base
    branch: main
    strategy: {type: serial}
    hosts: [{host: web1, roles: [web, db]}]
  production:
    <<: *base
    branch: prod
  canary:
    branch: canary
    <<: [{branch: nope, strategy: {type: rolling}}, *base]
`
	f := mustParse(t, src)
	if got, want := strings.Join(f.HookOrder, ","), "prepare,migrate,warm,after_activate"; got != want {
		t.Errorf("hook order %s, want %s", got, want)
	}
	if h := f.Hooks["migrate"]; h == nil || !h.RunOnce || h.When != StageBeforeActivate || h.Role != "db" {
		t.Errorf("merged migrate hook = %+v", h)
	}
	if h := f.Hooks["after_activate"]; h == nil || strings.Join(h.Commands, ";") != "echo explicit" {
		t.Errorf("the key next to << must win over the merged one: %+v", h)
	}
	if h := f.Hooks["warm"]; h == nil || h.When != StageAfterActivate || h.Commands[0] != "./warm" {
		t.Errorf("the first mapping of a merge list must win: %+v", h)
	}
	prod := f.Environments["production"]
	if prod.Name != "production" || prod.Branch != "prod" || prod.Strategy.Type != StrategySerial || len(prod.Hosts) != 1 || prod.Hosts[0].Host != "web1" {
		t.Errorf("production = %+v", prod)
	}
	canary := f.Environments["canary"]
	if canary.Name != "canary" || canary.Branch != "canary" || canary.Strategy.Type != StrategyRolling || len(canary.Hosts) != 1 {
		t.Errorf("canary = %+v", canary)
	}
	if st := f.Environments["staging"]; st.Name != "staging" || st.Branch != "main" {
		t.Errorf("staging = %+v", st)
	}
	if prod.Hosts[0] == f.Environments["staging"].Hosts[0] {
		t.Error("merged environments share one host value: a change to one changes the other")
	}
}

// TestAliases: an alias is a copy of what its anchor names, decoded on
// its own: a hook or environment written as *x keeps its own name and
// stage.
func TestAliases(t *testing.T) {
	src := head + `hooks:
  prepare: &cmds [echo one]
  after_activate: *cmds
  migrate: &m {run_once: true, commands: [./migrate]}
  backup: {<<: *m, commands: [./backup]}
environments:
  staging: &env {hosts: [{host: web1}]}
  production: *env
`
	f := mustParse(t, src)
	if h := f.Hooks["after_activate"]; h.Name != "after_activate" || h.When != StageAfterActivate {
		t.Errorf("aliased hook = %+v", h)
	}
	if h := f.Hooks["prepare"]; h.Name != "prepare" || h.When != StagePrepare {
		t.Errorf("anchored hook = %+v", h)
	}
	if h := f.Hooks["backup"]; h.Name != "backup" || !h.RunOnce || h.When != StageBeforeActivate || h.Commands[0] != "./backup" {
		t.Errorf("hook merged from an anchor = %+v", h)
	}
	if got := len(f.HooksFor(StagePrepare)); got != 1 {
		t.Errorf("%d prepare hooks, want 1", got)
	}
	if f.Environments["staging"].Name != "staging" || f.Environments["production"].Name != "production" {
		t.Errorf("aliased environments: staging %q, production %q", f.Environments["staging"].Name, f.Environments["production"].Name)
	}
}

// TestMergeAndAliasErrors: a bad anchor or a bad merge is an error with
// the file and line.
func TestMergeAndAliasErrors(t *testing.T) {
	env := "environments:\n  prod: {hosts: [{host: web1}]}\n"
	tests := []struct {
		name, src string
		line      int
		msg       string
	}{
		{"undefined alias", head + "hooks:\n  prepare: [a]\n  <<: *nowhere\n" + env, 6, "nowhere"},
		{"merge of a list of strings", head + "hooks:\n  prepare: [a]\n  <<: [a, b]\n" + env, 6, "<<"},
		{"merge of a scalar", head + "hooks:\n  prepare: [a]\n  <<: 3\n" + env, 6, "<<"},
		{"unknown key inside a merged mapping", head + "hooks:\n  prepare: [a]\nenvironments:\n  a: &a {hosts: [{host: web1}], colour: blue}\n  b: {<<: *a}\n", 7, `unknown key "colour"`},
		{"alias bomb", head + "hooks:\n  prepare: &a [x, x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n  f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n" + env, 9, "too large"},
		{"merged hook without a stage", head + "hooks:\n  prepare: [a]\n  <<: {purge: [./purge]}\n" + env, 6, "has no stage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("drover.yml", []byte(tc.src))
			e := configError(t, err)
			if e.Line != tc.line || !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), "drover.yml:") {
				t.Errorf("error %q on line %d, want line %d saying %q", err, e.Line, tc.line, tc.msg)
			}
		})
	}
}

// TestRefusesKeysWithoutEffect: strategy.max_unavailable is parsed but
// drives nothing yet, so a file that names it is refused rather than
// deployed as if hosts were held back; stop_grace of a systemd
// unit would be ignored (systemctl stop decides) and is refused too.
func TestRefusesKeysWithoutEffect(t *testing.T) {
	tests := []struct {
		name, env string
		line      int
		key, msg  string
	}{
		{"max_unavailable", "  production:\n    strategy:\n      type: rolling\n      max_unavailable: 1\n    hosts: [{host: web1}, {host: web2}]\n",
			10, "environments.production.strategy.max_unavailable", "not supported yet"},
		{"max_unavailable zero", "  production:\n    strategy: {type: rolling, max_unavailable: 0}\n    hosts: [{host: web1}]\n",
			8, "environments.production.strategy.max_unavailable", "not supported yet"},
		{"max_unavailable in an environment named with a dot", "  prod.eu:\n    strategy: {type: rolling, max_unavailable: 0}\n    hosts: [{host: web1}]\n",
			8, "environments.'prod.eu'.strategy.max_unavailable", "not supported yet"},
		{"stop_grace of a systemd unit", "  production:\n    hosts: [{host: web1}]\nservices:\n  worker: {systemd: shop-worker.service, stop_grace: 30s}\n",
			10, "services.worker.stop_grace", "systemd stops the unit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("drover.yml", []byte(head+"hooks:\n  prepare: [a]\nenvironments:\n"+tc.env))
			e := configError(t, err)
			if e.Line != tc.line || e.Key != tc.key || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("error %q (line %d, key %s), want line %d, key %s, saying %q", err, e.Line, e.Key, tc.line, tc.key, tc.msg)
			}
		})
	}
}
