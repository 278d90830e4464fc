package config

import (
	"errors"
	"strings"
	"testing"
)

// TestBadHookNamesRefused: a hook name that is empty, has a newline, a
// control sequence or a character outside letters, digits, '_', '-', '.'
// and ':' is refused at load, at the line of the name, saying the rule.
func TestBadHookNamesRefused(t *testing.T) {
	for _, name := range []string{`""`, `"purge\nnow"`, `"purge\e[2Jnow"`, `"purge now"`, `"purge/cdn"`, `"-purge"`, `"` + strings.Repeat("a", 65) + `"`} {
		t.Run(name, func(t *testing.T) {
			src := strings.Replace(valid, "  after_activate: [./bin/purge-cdn]", "  "+name+": {when: after_activate, commands: [./bin/purge-cdn]}", 1)
			_, err := Parse("drover.yml", []byte(src))
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("want a config error, got %v", err)
			}
			e := es[0]
			if e.Line != 11 || !strings.Contains(e.Msg, "is not a valid hook name") {
				t.Errorf("got %v (line %d); want line 11 naming the rule", err, e.Line)
			}
			if strings.ContainsAny(err.Error(), "\n\x1b") {
				t.Errorf("the error repeats the raw name: %q", err.Error())
			}
		})
	}
	for _, name := range []string{"purge", "db-migrate", "assets:precompile", "Purge_CDN.v2"} {
		src := strings.Replace(valid, "  after_activate: [./bin/purge-cdn]", "  "+name+": {when: after_activate, commands: [./bin/purge-cdn]}", 1)
		if _, err := Parse("drover.yml", []byte(src)); err != nil {
			t.Errorf("hook %q refused: %v", name, err)
		}
	}
}
