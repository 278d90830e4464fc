package cli

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/testenv/servertest"
)

// TestServeTLSAndAdminToken starts `drover server` with a certificate on an
// empty data dir: it prints an https URL and the admin token's path (mode
// 0600), the token works over TLS with the CA, and a client that does not
// trust the certificate is refused.
func TestServeTLSAndAdminToken(t *testing.T) {
	dir := t.TempDir()
	tc := servertest.SelfSigned(t)
	cert, key := tc.CertFile, tc.KeyFile
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	urls := make(chan string, 1)
	done := make(chan error, 1)
	o := &ServerOptions{Listen: "127.0.0.1:0", Data: filepath.Join(dir, "data"), TLSCert: cert, TLSKey: key,
		IO: IO{Out: pw, Err: io.Discard}, Ready: func(u string) { urls <- u }}
	var printed strings.Builder
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(&printed, pr); close(copied) }()
	go func() { done <- Serve(ctx, o) }()
	var url string
	select {
	case url = <-urls:
	case err := <-done:
		t.Fatalf("server: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("server did not start")
	}
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("url %s", url)
	}
	tokenFile := filepath.Join(dir, "data", "admin.token")
	fi, err := os.Stat(tokenFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v %v", fi, err)
	}
	secret, _ := os.ReadFile(tokenFile)
	c, err := api.NewClient(url, strings.TrimSpace(string(secret)), cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateRelease(ctx, api.CreateRelease{App: "shop", Env: "prod", Spec: "tag:v1"}); err != nil {
		t.Fatalf("create release over TLS: %v", err)
	}
	untrusting, _ := api.NewClient(url, strings.TrimSpace(string(secret)), "")
	if _, err := untrusting.Releases(ctx, "shop", ""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without the CA got %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	pw.Close()
	<-copied
	if !strings.Contains(printed.String(), "first admin token written to "+tokenFile) {
		t.Errorf("server printed %q", printed.String())
	}
}
