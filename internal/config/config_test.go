package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const valid = `app: shop
repo: git@example.com:acme/shop.git
deploy_to: /srv/shop
keep_releases: 3
shared:
  dirs: [log, tmp/pids, public/uploads]
  files: [.env]
hooks:
  prepare: [echo build]
  migrate: {run_once: true, role: db, commands: [./bin/backup, ./manage.py migrate]}
  after_activate: [./bin/purge-cdn]
services:
  web:
    start: ./bin/server --port {{port}}
    ports: [8000, 8001]
    health: {http: "http://127.0.0.1:{{port}}/healthz", timeout: 5s}
  worker:
    systemd: shop-worker.service
environments:
  staging: {hosts: [{host: 10.0.0.5, roles: [web, db]}]}
  production:
    branch: prod
    strategy: {type: rolling, batch: 2}
    hosts:
      - {host: web1.internal, roles: [web, db], port: 2222, user: deploy}
      - {name: web2, host: web2.internal, roles: [web]}
  local:
    hosts: [{transport: local, roles: [web, db]}]
`

func TestParseValid(t *testing.T) {
	f, err := Parse("drover.yml", []byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(f.HookOrder, ","), "prepare,migrate,after_activate"; got != want {
		t.Errorf("hook order %s, want %s", got, want)
	}
	if h := f.Hooks["migrate"]; h.When != StageBeforeActivate || !h.RunOnce || h.Role != "db" || len(h.Commands) != 2 {
		t.Errorf("migrate hook = %+v", h)
	}
	if got := f.Hooks["prepare"].TimeoutOrDefault(); got != DefaultHookTimeout {
		t.Errorf("default hook timeout %v, want %v", got, DefaultHookTimeout)
	}
	g, err := Parse("drover.yml", []byte(strings.Replace(valid, "role: db,", "role: db, timeout: 10m,", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if got := g.Hooks["migrate"].TimeoutOrDefault(); got != 10*time.Minute {
		t.Errorf("hook timeout %v, want 10m", got)
	}
	if f.Environments["staging"].Branch != "staging" {
		t.Errorf("staging branch defaults to its name, got %q", f.Environments["staging"].Branch)
	}
	if f.Environments["production"].Branch != "prod" {
		t.Errorf("production branch = %q", f.Environments["production"].Branch)
	}
	prod := f.Environments["production"]
	if prod.Hosts[0].Name != "web1.internal" || prod.Hosts[0].Transport != TransportSSH || prod.Hosts[0].Port != 2222 {
		t.Errorf("host defaults: %+v", prod.Hosts[0])
	}
	if l := f.Environments["local"].Hosts[0]; l.Name != "local" || l.Transport != TransportLocal {
		t.Errorf("local host: %+v", l)
	}
	if got := f.Services["web"].Health.Timeout.D(); got != 5*time.Second {
		t.Errorf("health timeout %v", got)
	}
	if got := f.Services["web"].StopGrace.D(); got != 10*time.Second {
		t.Errorf("stop grace default %v", got)
	}
	if f.Environments["staging"].Strategy.Type != StrategyAllAtOnce {
		t.Errorf("default strategy %q", f.Environments["staging"].Strategy.Type)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(string) string
		line    int
		wantMsg string
	}{
		{"unknown top key", func(s string) string { return s + "colour: blue\n" }, 29, `unknown key "colour"`},
		{"unknown host key", func(s string) string {
			return strings.Replace(s, "{name: web2, host: web2.internal, roles: [web]}", "{name: web2, host: web2.internal, rolez: [web]}", 1)
		}, 26, `unknown key "rolez"`},
		{"wrong type", func(s string) string { return strings.Replace(s, "keep_releases: 3", "keep_releases: three", 1) }, 4, "keep_releases"},
		{"wrong type port", func(s string) string { return strings.Replace(s, "ports: [8000, 8001]", "ports: [eighty]", 1) }, 15, "ports"},
		{"missing app", func(s string) string { return strings.Replace(s, "app: shop\n", "", 1) }, 1, "missing required key app"},
		{"missing deploy_to", func(s string) string { return strings.Replace(s, "deploy_to: /srv/shop\n", "", 1) }, 1, "missing required key deploy_to"},
		{"relative deploy_to", func(s string) string { return strings.Replace(s, "deploy_to: /srv/shop", "deploy_to: srv/shop", 1) }, 3, "must be an absolute path"},
		{"bad duration", func(s string) string { return strings.Replace(s, "timeout: 5s", "timeout: 5 parsecs", 1) }, 16, `"5 parsecs" is not a duration`},
		{"duplicate host", func(s string) string {
			return strings.Replace(s, "{name: web2, host: web2.internal", "{name: web1.internal, host: web2.internal", 1)
		}, 26, `duplicate host "web1.internal"`},
		{"unknown role in hook", func(s string) string { return strings.Replace(s, "role: db", "role: database", 1) }, 10, `unknown role "database"`},
		{"unknown strategy", func(s string) string { return strings.Replace(s, "type: rolling", "type: yolo", 1) }, 23, `unknown strategy "yolo"`},
		{"service without start", func(s string) string {
			return strings.Replace(s, "    systemd: shop-worker.service\n", "    ports: [9000]\n", 1)
		}, 18, "needs start"},
		{"port without ports", func(s string) string { return strings.Replace(s, "ports: [8000, 8001]", "ports: []", 1) }, 14, "uses {{port}} but lists no ports"},
		{"shared escapes", func(s string) string { return strings.Replace(s, "files: [.env]", "files: [../etc/passwd]", 1) }, 7, "must be a relative path"},
		{"shared under a shared file", func(s string) string {
			return strings.Replace(s, "dirs: [log, tmp/pids, public/uploads]", "dirs: [log, tmp/pids, public/uploads, .env/keys]", 1)
		}, 6, `".env/keys" is inside ".env", listed under shared.files`},
		{"hook without stage", func(s string) string { return strings.Replace(s, "  after_activate:", "  purge:", 1) }, 11, "has no stage"},
		{"host without address", func(s string) string {
			return strings.Replace(s, "{host: 10.0.0.5, roles: [web, db]}", "{roles: [web, db]}", 1)
		}, 20, "missing required key host"},
		{"zero hook timeout", func(s string) string { return strings.Replace(s, "role: db,", "role: db, timeout: 0,", 1) }, 10, "must be more than 0"},
		{"bad hook timeout", func(s string) string { return strings.Replace(s, "role: db,", "role: db, timeout: soon,", 1) }, 10, `"soon" is not a duration`},
		{"bind on a systemd unit", func(s string) string {
			return strings.Replace(s, "    systemd: shop-worker.service\n", "    systemd: shop-worker.service\n    socket: true\n    bind: 127.0.0.1\n", 1)
		}, 20, "ListenStream"},
		{"socket without ports", func(s string) string {
			return strings.Replace(s, "    systemd: shop-worker.service\n", "    start: ./bin/worker\n    socket: true\n", 1)
		}, 19, "socket: true needs ports"},
		{"socket with a compound start", func(s string) string {
			return strings.Replace(s, "    start: ./bin/server --port {{port}}\n", "    start: cd app && ./bin/server --port {{port}}\n    socket: true\n", 1)
		}, 14, "one command"},
		{"socket wrong type", func(s string) string {
			return strings.Replace(s, "    ports: [8000, 8001]\n", "    ports: [8000, 8001]\n    socket: sure\n", 1)
		}, 16, "socket"},
		{"bind without socket", func(s string) string {
			return strings.Replace(s, "    ports: [8000, 8001]\n", "    ports: [8000, 8001]\n    bind: 127.0.0.1\n", 1)
		}, 16, "bind applies only with socket: true"},
		{"bind not an address", func(s string) string {
			return strings.Replace(s, "    ports: [8000, 8001]\n", "    ports: [8000, 8001]\n    socket: true\n    bind: localhost\n", 1)
		}, 17, `"localhost" is not an IP address`},
		{"reuse_port with socket", func(s string) string {
			return strings.Replace(s, "    ports: [8000, 8001]\n", "    ports: [8000, 8001]\n    socket: true\n    reuse_port: true\n", 1)
		}, 17, "not both"},
		{"reuse_port without ports", func(s string) string {
			return strings.Replace(s, "    systemd: shop-worker.service\n", "    start: ./bin/worker\n    reuse_port: true\n", 1)
		}, 19, "reuse_port: true needs ports"},
		{"bad spacing", func(s string) string { return s + "  broken:\n hosts: []\n" }, 30, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("drover.yml", []byte(tc.edit(valid)))
			if err == nil {
				t.Fatal("no error")
			}
			var e *Error
			var es Errors
			switch {
			case errors.As(err, &es):
				e = es[0]
			case errors.As(err, &e):
			default:
				t.Fatalf("error %T is not a *config.Error: %v", err, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
			if e.Line != tc.line {
				t.Errorf("error %q on line %d, want %d", err, e.Line, tc.line)
			}
			if !strings.HasPrefix(err.Error(), "drover.yml:") {
				t.Errorf("error %q does not start with the file name", err)
			}
		})
	}
}

func TestParseSocket(t *testing.T) {
	f, err := Parse("drover.yml", []byte(strings.Replace(valid, "    ports: [8000, 8001]\n", "    ports: [8000, 8001]\n    socket: true\n    bind: 127.0.0.1\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if w := f.Services["web"]; !w.Socket || w.Bind != "127.0.0.1" {
		t.Errorf("web service: socket %v bind %q; want true, 127.0.0.1", w.Socket, w.Bind)
	}
	if f.Services["worker"].Socket {
		t.Error("socket defaults to true")
	}
	f, err = Parse("drover.yml", []byte(strings.Replace(valid, "    systemd: shop-worker.service\n", "    systemd: shop-worker.service\n    socket: true\n", 1)))
	if err != nil || !f.Services["worker"].Socket {
		t.Errorf("socket: true on a systemd unit (its .socket unit holds the sockets): %v", err)
	}
	f, err = Parse("drover.yml", []byte(strings.Replace(valid, "timeout: 5s}", "timeout: 5s, min_healthy_time: 2s}", 1)))
	if err != nil || f.Services["web"].Health.MinHealthyTime.D() != 2*time.Second {
		t.Errorf("min_healthy_time: 2s: %v", err)
	}
	f, err = Parse("drover.yml", []byte(strings.Replace(valid, "    ports: [8000, 8001]\n", "    ports: [8000, 8001]\n    reuse_port: true\n", 1)))
	if err != nil || !f.Services["web"].ReusePort {
		t.Errorf("reuse_port: true: %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "drover.yml"))
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(err.Error(), "drover init") {
		t.Fatalf("want a config error pointing at drover init, got %v", err)
	}
}

func TestLoadReadsFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "drover.yml")
	if err := os.WriteFile(p, []byte(valid), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != p || f.App != "shop" {
		t.Errorf("loaded %q app %q", f.Path, f.App)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("app: x\n"))
	f.Add([]byte("hooks: {a: [1, 2]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yml", data)
		if err == nil && (cfg.App == "" || cfg.DeployTo == "" || len(cfg.Environments) == 0) {
			t.Fatalf("accepted a file without required keys: %q", data)
		}
	})
}

// TestSharedNestedEntries accepts a shared dir or file inside another
// shared dir: it is shared through the outer one (the engine creates it
// under shared/ and links only the outer path).
func TestSharedNestedEntries(t *testing.T) {
	src := strings.Replace(valid, "dirs: [log, tmp/pids, public/uploads]\n  files: [.env]",
		"dirs: [log, tmp/pids, public/uploads, public, storage]\n  files: [.env, storage/oauth-private.key]", 1)
	f, err := Parse("drover.yml", []byte(src))
	if err != nil {
		t.Fatalf("nested shared entries refused: %v", err)
	}
	if len(f.Shared.Dirs) != 5 || len(f.Shared.Files) != 2 {
		t.Errorf("shared = %+v", f.Shared)
	}
}

// TestRepoOptionRefused: a repo git would read as an option is refused at
// load, on its line.
func TestRepoOptionRefused(t *testing.T) {
	in := strings.Replace(valid, "repo: ", `repo: "--upload-pack=touch /tmp/x" #`, 1)
	_, err := Parse("drover.yml", []byte(in))
	if err == nil || !strings.Contains(err.Error(), "drover.yml:2") || !strings.Contains(err.Error(), "may not start with '-'") {
		t.Fatalf("Parse = %v; want drover.yml:2 refusing the leading '-'", err)
	}
}

// ParseCode validates only what a deploy takes from a commit: an
// environments section today's drover refuses, or no environments, app or
// repo at all, passes; an invalid hook or service is refused at its line;
// an unknown key anywhere is still refused.
func TestParseCode(t *testing.T) {
	code := "hooks:\n  migrate: {role: db, commands: ['rake db:migrate']}\nservices:\n  web: {start: ./web, ports: [8080]}\nenvironments:\n  prod:\n    strategy: {type: rolling, batch: 1, max_unavailable: 1}\n    hosts: [{host: a}]\n"
	f, err := ParseCode("drover.yml@abc", []byte(code))
	if err != nil {
		t.Fatalf("ParseCode: %v", err)
	}
	if f.Hooks["migrate"].When != StageBeforeActivate || f.KeepReleases != 5 || f.Services["web"].StopGrace == 0 {
		t.Errorf("defaults not applied: %+v", f)
	}
	if _, err := Parse("drover.yml", []byte(code)); err == nil {
		t.Error("Parse accepted max_unavailable and a file without app")
	}
	for _, tc := range []struct{ yml, want string }{
		{"hooks:\n  colour: [blue]\n", `drover.yml@abc:2: hooks.colour: hook "colour" has no stage`},
		{"keep_releases: 1\nservices:\n  web: {ports: [8080]}\n", "drover.yml@abc:3:"},
		{"hooks:\n  prepare: [make]\nfrobnicate: 1\n", "frobnicate"},
	} {
		_, err := ParseCode("drover.yml@abc", []byte(tc.yml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseCode(%q) = %v, want an error with %q", tc.yml, err, tc.want)
		}
	}
}
