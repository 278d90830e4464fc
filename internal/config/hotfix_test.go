package config

import (
	"strings"
	"testing"
)

// TestHookHotfix: `hotfix: skip` on a hook mapping marks it left out of a
// `drover deploy --hotfix`; `run` and no key run it; anything else is an
// error naming the file, line and key.
func TestHookHotfix(t *testing.T) {
	src := head + `hooks:
  prepare: [echo build]
  collectstatic: {when: prepare, hotfix: skip, commands: [./collect]}
  migrate: {run_once: true, role: db, hotfix: skip, commands: [./migrate]}
  purge: {when: after_activate, hotfix: run, commands: [./purge]}
environments:
  prod: {hosts: [{host: web1, roles: [web, db]}]}
`
	f := mustParse(t, src)
	for name, want := range map[string]bool{"prepare": false, "collectstatic": true, "migrate": true, "purge": false} {
		if got := f.Hooks[name].SkipsOnHotfix(); got != want {
			t.Errorf("hook %s: SkipsOnHotfix %v, want %v", name, got, want)
		}
	}
	for _, c := range []struct {
		name, value string
		line        int
		want        string
	}{
		{"maybe", "maybe", 7, `"maybe"`},
		{"boolean", "true", 7, `"true"`},
		{"empty", `""`, 7, "skip or run"},
		{"null", "null", 7, "skip or run"},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := strings.Replace(src, "hotfix: skip, commands: [./migrate]", "hotfix: "+c.value+", commands: [./migrate]", 1)
			_, err := Parse("drover.yml", []byte(bad))
			e := configError(t, err)
			if e.File != "drover.yml" || e.Line != c.line || e.Key != "hooks.migrate.hotfix" || !strings.Contains(e.Msg, c.want) || !strings.Contains(e.Msg, "skip or run") {
				t.Errorf("hotfix: %s: got %q (line %d, key %q), want drover.yml:%d hooks.migrate.hotfix naming %s and skip or run", c.value, err, e.Line, e.Key, c.line, c.want)
			}
		})
	}
}
