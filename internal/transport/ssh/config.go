package ssh

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
)

// Config says how to reach one host. Fields left zero come from the
// OpenSSH client config (SSHConfig), then from OpenSSH's defaults.
type Config struct {
	Name         string        // display name used in errors and logs; default Host
	Host         string        // address or ~/.ssh/config alias
	Port         int           // 0 = from ssh config or 22
	User         string        // "" = from ssh config or the current user
	IdentityFile string        // optional; tried first, then ssh config's IdentityFile, then ssh-agent (SSH_AUTH_SOCK)
	KnownHosts   string        // the user known_hosts file; default: ssh config's UserKnownHostsFile (every file it lists), else ~/.ssh/known_hosts and ~/.ssh/known_hosts2. The GlobalKnownHostsFile (default /etc/ssh/ssh_known_hosts{,2}) is read too
	AcceptNew    bool          // add unknown host keys to the first user known_hosts file; a key pinned differently in any file is always refused
	SSHConfig    string        // default ~/.ssh/config (missing is fine); HostName, User, Port, IdentityFile, UserKnownHostsFile, GlobalKnownHostsFile, HostKeyAlias, StrictHostKeyChecking, ProxyCommand and a one-hop ProxyJump are honoured (see resolve); KnownHostsCommand is refused; the jump host is checked against the same known_hosts and also offered IdentityFile
	DialTimeout  time.Duration // TCP connect plus SSH handshake, per hop; default 15s
	Logger       *slog.Logger  // default: discard
}

const defaultDialTimeout = 15 * time.Second

// hop is one resolved SSH server: where it is, who to log in as, which
// keys to offer and how to check its host key.
type hop struct {
	name       string   // for messages
	host       string   // HostName
	port       int      // resolved port
	user       string   // resolved user
	explicitID string   // Config.IdentityFile
	configIDs  []string // ssh config IdentityFile, expanded
	proxyJump  string   // "" or "[user@]host[:port]" (one hop)
	// proxyCommand is the ssh config's ProxyCommand with its tokens
	// expanded: run with sh -c, its stdio is the connection.
	proxyCommand string
	trust        trust
	timeout      time.Duration
}

// trust is how a hop's host key is checked, as ssh(1) would for the same
// config.
type trust struct {
	userFiles   []string // UserKnownHostsFile(s); the first gets accepted keys
	globalFiles []string // GlobalKnownHostsFile(s), read only
	alias       string   // HostKeyAlias: the name looked up instead of host:port
	acceptNew   bool     // record unknown keys in userFiles[0], unless refuseNew
	// refuseNew, when set, is why an unknown key may not be accepted even
	// when acceptNew asks for it (StrictHostKeyChecking yes, /dev/null).
	refuseNew string
	// note is appended to every refusal: a config option drover does not
	// honour the way ssh(1) would.
	note string
}

func (h hop) addr() string { return net.JoinHostPort(h.host, strconv.Itoa(h.port)) }

// sshConfigFile is a parsed OpenSSH client config, or nil when there is none.
type sshConfigFile struct {
	path string
	cfg  *ssh_config.Config
}

func loadSSHConfig(path string) (*sshConfigFile, error) {
	explicit := path != ""
	if !explicit {
		home, err := os.UserHomeDir()
		if err != nil {
			return &sshConfigFile{}, nil
		}
		path = filepath.Join(home, ".ssh", "config")
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return &sshConfigFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ssh config: %w", err)
	}
	defer f.Close()
	cfg, err := ssh_config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("parse ssh config %s: %w", path, err)
	}
	return &sshConfigFile{path: path, cfg: cfg}, nil
}

func (s *sshConfigFile) get(alias, key string) (string, error) {
	if s.cfg == nil {
		return "", nil
	}
	v, err := s.cfg.Get(alias, key)
	if err != nil {
		return "", fmt.Errorf("ssh config %s: host %s: %s: %w", s.path, alias, key, err)
	}
	return strings.TrimSpace(v), nil
}

func (s *sshConfigFile) getAll(alias, key string) ([]string, error) {
	if s.cfg == nil {
		return nil, nil
	}
	v, err := s.cfg.GetAll(alias, key)
	if err != nil {
		return nil, fmt.Errorf("ssh config %s: host %s: %s: %w", s.path, alias, key, err)
	}
	return v, nil
}

// resolve fills in what c leaves open from the ssh config and defaults.
func resolve(c Config, sc *sshConfigFile) (hop, error) {
	alias := c.Host
	if alias == "" {
		return hop{}, errors.New("no host given")
	}
	h := hop{
		name: c.Name, host: alias, port: c.Port, user: c.User, explicitID: c.IdentityFile,
		timeout: c.DialTimeout,
	}
	if h.name == "" {
		h.name = alias
	}
	if h.timeout <= 0 {
		h.timeout = defaultDialTimeout
	}
	if v, err := sc.get(alias, "HostName"); err != nil {
		return hop{}, err
	} else if v != "" {
		h.host = strings.ReplaceAll(v, "%h", alias)
	}
	if h.port == 0 {
		v, err := sc.get(alias, "Port")
		if err != nil {
			return hop{}, err
		}
		h.port = 22
		if v != "" {
			if h.port, err = strconv.Atoi(v); err != nil || h.port <= 0 || h.port > 65535 {
				return hop{}, fmt.Errorf("ssh config %s: host %s: bad Port %q", sc.path, alias, v)
			}
		}
	}
	if h.user == "" {
		v, err := sc.get(alias, "User")
		if err != nil {
			return hop{}, err
		}
		h.user = v
	}
	if h.user == "" {
		h.user = currentUser()
	}
	home, _ := os.UserHomeDir()
	expand := func(p string) string {
		p = strings.NewReplacer("%d", home, "%u", currentUser(), "%r", h.user, "%h", h.host, "%%", "%").Replace(p)
		if p == "~" || strings.HasPrefix(p, "~/") {
			p = filepath.Join(home, p[1:])
		}
		return p
	}
	ids, err := sc.getAll(alias, "IdentityFile")
	if err != nil {
		return hop{}, err
	}
	for _, id := range ids {
		h.configIDs = append(h.configIDs, expand(strings.TrimSpace(id)))
	}
	if h.explicitID != "" {
		h.explicitID = expand(h.explicitID)
	}
	if h.trust, err = resolveTrust(c, sc, alias, home, expand); err != nil {
		return hop{}, err
	}
	if v, err := sc.get(alias, "KnownHostsCommand"); err != nil {
		return hop{}, err
	} else if v != "" && !strings.EqualFold(v, "none") {
		return hop{}, fmt.Errorf("ssh config %s: host %s: KnownHostsCommand %q is not supported by drover, which trusts only known_hosts files; "+
			"put the host's key in one (ssh-keyscan), or put \"KnownHostsCommand none\" in a Host block for %s above the one that sets it (the first value wins)", sc.path, alias, v, alias)
	}
	pc, err := sc.get(alias, "ProxyCommand")
	if err != nil {
		return hop{}, err
	}
	if pc != "" && !strings.EqualFold(pc, "none") {
		h.proxyCommand = proxyCommand(pc, alias, h)
	}
	pj, err := sc.get(alias, "ProxyJump")
	if err != nil {
		return hop{}, err
	}
	if pj != "" && !strings.EqualFold(pj, "none") {
		if h.proxyCommand != "" {
			return hop{}, fmt.Errorf("ssh config %s: host %s: both ProxyJump %q and ProxyCommand %q apply; keep one", sc.path, alias, pj, pc)
		}
		if strings.Contains(pj, ",") {
			return hop{}, fmt.Errorf("ssh config %s: host %s: ProxyJump %q has several hops; drover supports one", sc.path, alias, pj)
		}
		h.proxyJump = pj
	}
	return h, nil
}

// resolveTrust reads the known_hosts files and trust options for alias
// the way ssh(1) does. c.KnownHosts replaces the user files; the global
// files are always read. StrictHostKeyChecking yes (or ask) forbids
// accepting new keys, accept-new allows it, and no/off is not honoured:
// drover then behaves as without it and says so in any refusal.
func resolveTrust(c Config, sc *sshConfigFile, alias, home string, expand func(string) string) (trust, error) {
	tr := trust{acceptNew: c.AcceptNew}
	files := func(key string, def []string) ([]string, error) {
		v, err := sc.get(alias, key)
		if err != nil {
			return nil, err
		}
		if v == "" {
			return def, nil
		}
		var out []string
		for _, f := range strings.Fields(v) {
			if !strings.EqualFold(f, "none") {
				out = append(out, expand(f))
			}
		}
		return out, nil
	}
	var err error
	if c.KnownHosts != "" {
		tr.userFiles = []string{expand(c.KnownHosts)}
	} else if tr.userFiles, err = files("UserKnownHostsFile", []string{
		filepath.Join(home, ".ssh", "known_hosts"), filepath.Join(home, ".ssh", "known_hosts2"),
	}); err != nil {
		return trust{}, err
	}
	if tr.globalFiles, err = files("GlobalKnownHostsFile", []string{"/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"}); err != nil {
		return trust{}, err
	}
	if tr.alias, err = sc.get(alias, "HostKeyAlias"); err != nil {
		return trust{}, err
	}
	switch {
	case len(tr.userFiles) == 0:
		tr.refuseNew = fmt.Sprintf("UserKnownHostsFile is none (ssh config %s, host %s), so there is no file to record the key in", sc.path, alias)
	case tr.userFiles[0] == os.DevNull:
		tr.refuseNew = fmt.Sprintf("UserKnownHostsFile is %s (ssh config %s, host %s), so the key could not be pinned and any key would be trusted on every connection", os.DevNull, sc.path, alias)
	}
	strict, err := sc.get(alias, "StrictHostKeyChecking")
	if err != nil {
		return trust{}, err
	}
	switch strings.ToLower(strict) {
	case "":
	case "yes", "ask":
		if tr.refuseNew == "" {
			tr.refuseNew = fmt.Sprintf("StrictHostKeyChecking %s (ssh config %s, host %s) forbids trusting a key on first use", strict, sc.path, alias)
		}
	case "accept-new":
		tr.acceptNew = true
	case "no", "off":
		tr.note = fmt.Sprintf("StrictHostKeyChecking %s (ssh config %s, host %s) is not honoured: drover always checks host keys; "+
			"--insecure-accept-new trusts an unknown key on first use, a changed key is always refused", strict, sc.path, alias)
	default:
		return trust{}, fmt.Errorf("ssh config %s: host %s: bad StrictHostKeyChecking %q: use yes, accept-new or no", sc.path, alias, strict)
	}
	return tr, nil
}

// jumpConfig turns a ProxyJump value "[user@]host[:port]" (host may be an
// alias) into a Config for the jump host, keeping c's trust settings.
func jumpConfig(c Config, spec string) (Config, error) {
	spec = strings.TrimPrefix(spec, "ssh://")
	j := Config{
		KnownHosts: c.KnownHosts, AcceptNew: c.AcceptNew, SSHConfig: c.SSHConfig,
		DialTimeout: c.DialTimeout, Logger: c.Logger, IdentityFile: c.IdentityFile,
	}
	if i := strings.LastIndexByte(spec, '@'); i >= 0 {
		j.User, spec = spec[:i], spec[i+1:]
	}
	j.Host = spec
	if host, port, err := net.SplitHostPort(spec); err == nil {
		p, err := strconv.Atoi(port)
		if err != nil || p <= 0 || p > 65535 {
			return Config{}, fmt.Errorf("ProxyJump %q: bad port", spec)
		}
		j.Host, j.Port = host, p
	}
	if j.Host == "" {
		return Config{}, fmt.Errorf("ProxyJump %q: no host", spec)
	}
	j.Name = j.Host
	return j, nil
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}
