package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"

	"github.com/drover/drover/internal/config"
)

// InitOptions are the inputs of `drover init`.
type InitOptions struct {
	Dir   string // the repository to write drover.yml into; default "."
	Force bool   // overwrite an existing drover.yml
	IO    IO
}

var initTemplate = template.Must(template.New("drover.yml").Parse(`# drover.yml: how drover deploys {{.App}}. Every key is listed here; the
# commented ones are optional. Reference: drover tasks, drover help deploy.
app: {{.App}}
# Where hosts fetch the code from (any URL git understands).
repo: {{.Repo}}
# Where the app lives on each host: releases/, shared/, repo/, current.
deploy_to: /srv/{{.App}}
# How many good releases to keep on each host (failed ones go first).
keep_releases: 5
# A drover server whose deploy queue push deploys share: drover deploy waits
# its turn there, behind other deploys and server rollouts (DROVER_SERVER
# overrides it, DROVER_SERVER=off ignores it; the token is DROVER_TOKEN).
# server: https://drover.example.internal:8700

# Paths that survive releases: created in shared/ when missing, linked into
# every release, never deleted or overwritten by a deploy.
shared:
  dirs: [log, tmp/pids]
  files: []            # e.g. [.env]

# Hooks run shell commands in the new release directory with DROVER_APP,
# DROVER_ENV, DROVER_RELEASE, DROVER_RELEASE_DIR, DROVER_SHARED_DIR,
# DROVER_COMMIT, DROVER_PREVIOUS_RELEASE, DROVER_HOST and DROVER_ROLES set.
hooks:
  prepare: [echo "building $DROVER_RELEASE"]   # slow work, before anything switches
  # migrate: {run_once: true, role: db, commands: [./manage.py migrate]}   # once per rollout, before any host switches
  #   add hotfix: skip to a hook that drover deploy --hotfix (code only) leaves out
  # after_activate: [./bin/purge-cdn]

# Services drover runs: one process per port, PID files in shared/pids,
# logs in shared/log; restarted one port at a time after the switch.
services:
  web:
    start: ./bin/server --port {{"{{port}}"}}
    ports: [8000]
    health: {http: "http://127.0.0.1:{{"{{port}}"}}/healthz", timeout: 30s}
  # worker: {systemd: {{.App}}-worker.service}

# Environments deploy the branch of the same name unless told otherwise.
environments:
  staging:
    branch: {{.Branch}}
    hosts:
      - {host: staging.example.internal, roles: [web, db]}
  # production:
  #   strategy: {type: rolling, batch: 1}     # or all-at-once (default), serial
  #   hosts:
  #     - {name: web1, host: 10.0.0.11, user: deploy, roles: [web, db]}
  #     - {name: web2, host: 10.0.0.12, user: deploy, roles: [web]}
  # local:
  #   hosts: [{transport: local, roles: [web, db]}]   # this machine, no SSH
`))

// Init writes a commented drover.yml for the repository in o.Dir.
func Init(ctx context.Context, o *InitOptions) error {
	dir := o.Dir
	if dir == "" {
		dir = "."
	}
	path := filepath.Join(dir, config.DefaultFile)
	if _, err := os.Stat(path); err == nil && !o.Force {
		return &UsageError{fmt.Errorf("%s already exists; pass --force to overwrite it", path)}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	data := struct{ App, Repo, Branch string }{App: appName(filepath.Base(abs)), Repo: abs, Branch: "staging"}
	if out, err := gitOut(ctx, dir, "config", "--get", "remote.origin.url"); err == nil && out != "" {
		data.Repo = out
	} else if _, err := gitOut(ctx, dir, "rev-parse", "--git-dir"); err != nil {
		fmt.Fprintf(o.IO.Err, "note: %s is not a git repository; set repo: in %s\n", abs, path)
	}
	if out, err := gitOut(ctx, dir, "symbolic-ref", "--short", "HEAD"); err == nil && out != "" {
		data.Branch = out
	}
	var buf bytes.Buffer
	if err := initTemplate.Execute(&buf, data); err != nil {
		return err
	}
	if _, err := config.Parse(path, buf.Bytes()); err != nil {
		return fmt.Errorf("init: the generated file does not validate (a bug): %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(o.IO.Out, "wrote %s for app %s; edit hosts and hooks, then: drover deploy staging\n", path, data.App)
	return nil
}

var nonName = regexp.MustCompile(`[^a-z0-9_.-]+`)

func appName(base string) string {
	n := strings.Trim(nonName.ReplaceAllString(strings.ToLower(base), "-"), "-._")
	if n == "" {
		return "app"
	}
	return n
}

func gitOut(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		return "", errors.New("git " + args[0] + " failed")
	}
	return strings.TrimSpace(out.String()), nil
}
