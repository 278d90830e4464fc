package cli_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/cli"
)

// TestTasksPrintsNoControlSequences: `drover tasks` shows a hook's
// commands without the terminal escapes they contain (hook names with
// them are refused at load).
func TestTasksPrintsNoControlSequences(t *testing.T) {
	file := filepath.Join(t.TempDir(), "drover.yml")
	yml := "app: shop\nrepo: git@example.com:acme/shop.git\ndeploy_to: /srv/shop\nhooks:\n  purge: {when: prepare, commands: [\"printf '\\e]0;pwned\\a\\e[2J'\"]}\n" +
		"environments:\n  test: {hosts: [{transport: local, roles: [web]}]}\n"
	if err := os.WriteFile(file, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cli.Tasks(&cli.Common{File: file, IO: cli.IO{Out: &out, Err: &out}}); err != nil {
		t.Fatalf("tasks: %v", err)
	}
	got := out.String()
	if !strings.Contains(got, "purge") || !strings.Contains(got, "printf") {
		t.Fatalf("tasks lost the hook: %q", got)
	}
	if strings.ContainsAny(got, "\x1b\a") {
		t.Errorf("tasks printed control characters: %q", got)
	}
}
