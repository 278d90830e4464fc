package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Error is one problem in a drover.yml, located by file, line and key.
type Error struct {
	File   string
	Line   int
	Column int
	Key    string // the YAML path of the offending key, like environments.production.hosts[1].host
	Msg    string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key == "" {
		return fmt.Sprintf("%s: %s", loc, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
}

// Errors is every problem found in one file, in file order.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Load reads and validates the drover.yml at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, &Error{File: path, Msg: "no such file; run `drover init` to write one, or pass -f FILE"}
		}
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates data as the drover.yml named path.
func Parse(name string, data []byte) (*File, error) {
	return parse(name, data, modeFull)
}

// ParsePull decodes and validates data as strictly as Parse, for a control
// server that rolls the app out to agents (pull mode): an environment may
// list no hosts, since its nodes are the agents that registered for it, and
// a hook's role is then not checked against the hosts' roles (the agents
// declare theirs). Errors name the file, line and key like Parse's.
func ParsePull(name string, data []byte) (*File, error) {
	return parse(name, data, modePull)
}

// ParseCode decodes data, the drover.yml in a commit, as strictly as Parse,
// but validates only what a deploy takes from the commit (see
// File.AtCommit): hooks, services, shared and keep_releases. The rest (app,
// repo, deploy_to, environments) comes from the deployer's file, so a key
// there that today's drover refuses does not stop a rollback to the commit.
func ParseCode(name string, data []byte) (*File, error) {
	return parse(name, data, modeCode)
}

// What parse validates.
const (
	modeFull = iota // everything (Parse)
	modeCode        // what a deploy takes from a commit (ParseCode)
	modePull        // everything, environments without hosts allowed (ParsePull)
)

func parse(name string, data []byte, mode int) (*File, error) {
	astFile, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, yamlError(name, err)
	}
	if len(astFile.Docs) == 0 || astFile.Docs[0].Body == nil {
		return nil, &Error{File: name, Line: 1, Msg: "file is empty; it needs at least app, repo, deploy_to and environments"}
	}
	if len(astFile.Docs) > 1 {
		return nil, &Error{File: name, Line: 1, Msg: "file holds more than one YAML document; keep one"}
	}
	body, err := expand(astFile.Docs[0].Body)
	if err != nil {
		return nil, yamlError(name, err)
	}
	doc := *astFile.Docs[0]
	doc.Body = body
	plain := *astFile
	plain.Docs = []*ast.DocumentNode{&doc}
	astFile = &plain
	var f File
	if err := yaml.NodeToValue(body, &f, yaml.DisallowUnknownField()); err != nil {
		e := yamlError(name, err)
		if ce, ok := e.(*Error); ok {
			locate(astFile, err, ce)
		}
		return nil, e
	}
	f.Path = name
	v := validator{file: name, ast: astFile, pull: mode == modePull}
	v.defaults(&f)
	if mode == modeCode {
		v.validateCode(&f)
	} else {
		v.validate(&f)
	}
	if len(v.errs) > 0 {
		sort.SliceStable(v.errs, func(i, j int) bool { return v.errs[i].Line < v.errs[j].Line })
		return nil, v.errs
	}
	return &f, nil
}

// locate names the key of a decode error by its place in the document, and
// says in plain words what type was expected.
func locate(f *ast.File, err error, e *Error) {
	var ye yaml.Error
	if !errors.As(err, &ye) || ye.GetToken() == nil {
		return
	}
	tk := ye.GetToken()
	var found ast.Node
	for _, doc := range f.Docs {
		ast.Walk(visitFunc(func(n ast.Node) bool {
			if found == nil && n.GetToken() == tk {
				found = n
			}
			return found == nil
		}), doc)
	}
	if found != nil {
		e.Key = strings.TrimPrefix(found.GetPath(), "$.")
	}
	var te *yaml.TypeError
	if errors.As(err, &te) && te.DstType != nil {
		e.Msg = fmt.Sprintf("%q is not %s", tk.Value, kindName(te.DstType.Kind()))
	}
}

type visitFunc func(ast.Node) bool

func (v visitFunc) Visit(n ast.Node) ast.Visitor {
	if v(n) {
		return v
	}
	return nil
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list (like [a, b])"
	case reflect.Map, reflect.Struct, reflect.Pointer:
		return "a mapping (key: value lines)"
	}
	return "of the right type (" + k.String() + ")"
}

var positionPrefix = regexp.MustCompile(`^\[\d+:\d+\]\s*`)

// yamlError turns a go-yaml error into an *Error with a line and the key.
func yamlError(file string, err error) error {
	var ne *nodeError
	if errors.As(err, &ne) {
		e := &Error{File: file, Key: strings.TrimPrefix(ne.node.GetPath(), "$."), Msg: ne.msg}
		if tk := ne.node.GetToken(); tk != nil && tk.Position != nil {
			e.Line, e.Column = tk.Position.Line, tk.Position.Column
		}
		return e
	}
	var ye yaml.Error
	if !errors.As(err, &ye) {
		return &Error{File: file, Msg: err.Error()}
	}
	e := &Error{File: file, Msg: positionPrefix.ReplaceAllString(ye.GetMessage(), "")}
	if tk := ye.GetToken(); tk != nil && tk.Position != nil {
		e.Line, e.Column = tk.Position.Line, tk.Position.Column
		e.Key = tk.Value
	}
	var unknown *yaml.UnknownFieldError
	if errors.As(err, &unknown) {
		e.Msg = "unknown key " + strconv.Quote(unknown.Token.Value) + "; check its spelling and indentation (see `drover init` for every key)"
	}
	return e
}

type validator struct {
	file string
	ast  *ast.File
	errs Errors
	// pull allows environments without hosts (ParsePull).
	pull bool
}

// at records an error at the YAML path p (like $.environments.prod.hosts[0]).
func (v *validator) at(p string, format string, args ...any) {
	e := &Error{File: v.file, Key: strings.TrimPrefix(p, "$."), Msg: fmt.Sprintf(format, args...)}
	e.Line, e.Column = v.position(p)
	v.errs = append(v.errs, e)
}

// position finds the line of the longest prefix of p present in the file.
func (v *validator) position(p string) (int, int) {
	for p != "" && p != "$" {
		if yp, err := yaml.PathString(p); err == nil {
			if n, err := yp.FilterFile(v.ast); err == nil && n != nil {
				if tk := n.GetToken(); tk != nil && tk.Position != nil {
					return tk.Position.Line, tk.Position.Column
				}
			}
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 1, 1
}

// keyPosition finds the line of key name in the mapping at p, or of p
// itself when the key is not found.
func (v *validator) keyPosition(p, name string) (int, int) {
	if yp, err := yaml.PathString(p); err == nil {
		if m, err := yp.FilterFile(v.ast); err == nil {
			if m, ok := m.(*ast.MappingNode); ok {
				for _, kv := range m.Values {
					if keyString(kv.Key) != name {
						continue
					}
					if tk := kv.Key.GetToken(); tk != nil && tk.Position != nil {
						return tk.Position.Line, tk.Position.Column
					}
				}
			}
		}
	}
	return v.position(p)
}

// keyOrder returns the keys of the mapping at p in file order.
func (v *validator) keyOrder(p string) []string {
	yp, err := yaml.PathString(p)
	if err != nil {
		return nil
	}
	n, err := yp.FilterFile(v.ast)
	if err != nil || n == nil {
		return nil
	}
	var keys []string
	switch m := n.(type) {
	case *ast.MappingNode:
		for _, kv := range m.Values {
			keys = append(keys, keyString(kv.Key))
		}
	case *ast.MappingValueNode:
		keys = append(keys, keyString(m.Key))
	}
	return keys
}

func (v *validator) defaults(f *File) {
	if f.KeepReleases == 0 {
		f.KeepReleases = 5
	}
	for name, h := range f.Hooks {
		if h == nil {
			continue
		}
		h.Name = name
		if h.When == "" {
			switch name {
			case StagePrepare, StageAfterActivate, StageBeforeActivate:
				h.When = name
			case "migrate", "backup":
				h.When = StageBeforeActivate
			}
		}
	}
	for _, k := range v.keyOrder("$.hooks") {
		if _, ok := f.Hooks[k]; ok && !slices.Contains(f.HookOrder, k) {
			f.HookOrder = append(f.HookOrder, k)
		}
	}
	// A hook the file order missed still runs and is validated: every
	// hook the file declares runs or is an error, never dropped.
	for _, k := range sortedKeys(f.Hooks) {
		if !slices.Contains(f.HookOrder, k) {
			f.HookOrder = append(f.HookOrder, k)
		}
	}
	for name, s := range f.Services {
		if s == nil {
			continue
		}
		s.Name = name
		if s.Health != nil {
			if s.Health.Timeout == 0 {
				s.Health.Timeout = Duration(30 * time.Second)
			}
			if s.Health.Interval == 0 {
				s.Health.Interval = Duration(200 * time.Millisecond)
			}
		}
		if s.StopGrace == 0 {
			s.StopGrace = Duration(10 * time.Second)
		}
	}
	for name, e := range f.Environments {
		if e == nil && v.pull {
			// "staging:" alone: in pull mode its agents are its hosts.
			e = &Environment{}
			f.Environments[name] = e
		}
		if e == nil {
			continue
		}
		e.Name = name
		if e.Branch == "" {
			e.Branch = name
		}
		if e.Strategy.Type == "" || e.Strategy.Type == StrategyTwoPhase {
			e.Strategy.Type = StrategyAllAtOnce
		}
		for _, h := range e.Hosts {
			if h == nil {
				continue
			}
			if h.Transport == "" {
				h.Transport = TransportSSH
				if h.Host == "" {
					h.Transport = ""
				}
			}
			if h.Name == "" {
				h.Name = h.Host
				if h.Transport == TransportLocal && h.Name == "" {
					h.Name = "local"
				}
			}
		}
	}
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	// hookNameRE is what a hook name may be: it is printed in deploy
	// output, `drover tasks` and the logs, and used as a YAML path.
	hookNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`)
	unitRE     = regexp.MustCompile(`^[A-Za-z0-9@._:\\-]+$`)
)

// ValidName reports whether s may name an app, an environment or a
// service: lowercase letters, digits, '-', '_' or '.', at most 63.
func ValidName(s string) bool { return nameRE.MatchString(s) }

func (v *validator) validate(f *File) {
	if f.App == "" {
		v.at("$", "missing required key app (the app's name, like app: shop)")
	} else if !nameRE.MatchString(f.App) {
		v.at("$.app", "%q is not a valid app name: use lowercase letters, digits, '-', '_' or '.'", f.App)
	}
	if f.Repo == "" {
		v.at("$", "missing required key repo (the git URL hosts fetch from)")
	} else if strings.HasPrefix(f.Repo, "-") {
		v.at("$.repo", "%q may not start with '-': git would read it as an option; give a URL or a path", f.Repo)
	}
	switch {
	case f.DeployTo == "":
		v.at("$", "missing required key deploy_to (an absolute path on the hosts, like /srv/shop)")
	case !path.IsAbs(f.DeployTo) || path.Clean(f.DeployTo) == "/":
		v.at("$.deploy_to", "%q must be an absolute path below /, like /srv/%s", f.DeployTo, f.App)
	}
	if f.KeepReleases < 1 {
		v.at("$.keep_releases", "must be at least 1, got %d", f.KeepReleases)
	}
	v.validateShared(f)
	v.validateServer(f)
	roles := v.validateEnvironments(f)
	if v.pull && slices.ContainsFunc(f.EnvironmentNames(), func(n string) bool { return f.Environments[n] == nil || len(f.Environments[n].Hosts) == 0 }) {
		// The agents of a hostless environment declare their roles when
		// they register: no role can be refused here.
		roles = nil
	}
	v.validateHooks(f, roles)
	v.validateServices(f)
}

// validateCode validates what File.AtCommit takes from a commit's file. Hook
// roles are not checked: the hosts, and so the roles, are the deployer's.
func (v *validator) validateCode(f *File) {
	if f.KeepReleases < 1 {
		v.at("$.keep_releases", "must be at least 1, got %d", f.KeepReleases)
	}
	v.validateShared(f)
	v.validateHooks(f, nil)
	v.validateServices(f)
}

func (v *validator) validateShared(f *File) {
	seen := map[string]string{}
	check := func(kind string, i int, p string) {
		key := fmt.Sprintf("$.shared.%s[%d]", kind, i)
		clean := path.Clean(p)
		switch {
		case p == "":
			v.at(key, "empty path")
		case path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "../") || clean == ".":
			v.at(key, "%q must be a relative path inside the release, like log or public/uploads", p)
		case clean == ".drover" || strings.HasPrefix(clean, ".git/") || clean == ".git":
			v.at(key, "%q is reserved", p)
		default:
			if prev, dup := seen[clean]; dup {
				v.at(key, "%q is already listed under shared.%s", p, prev)
			}
			seen[clean] = kind
		}
	}
	for i, d := range f.Shared.Dirs {
		check("dirs", i, d)
	}
	for i, d := range f.Shared.Files {
		check("files", i, d)
	}
	// A path inside a shared dir is shared through it (the engine creates
	// it under shared/ and links only the dir); one inside a shared file
	// cannot exist.
	for _, l := range []struct {
		kind string
		list []string
	}{{"dirs", f.Shared.Dirs}, {"files", f.Shared.Files}} {
		kind := l.kind
		for i, p := range l.list {
			for _, file := range f.Shared.Files {
				if strings.HasPrefix(path.Clean(p), path.Clean(file)+"/") {
					v.at(fmt.Sprintf("$.shared.%s[%d]", kind, i), "%q is inside %q, listed under shared.files; a file holds no paths: remove one of them", p, file)
				}
			}
		}
	}
}

func (v *validator) validateEnvironments(f *File) map[string]bool {
	roles := map[string]bool{}
	if len(f.Environments) == 0 {
		v.at("$", "missing required key environments (at least one, like staging: {hosts: [{host: 10.0.0.5}]})")
		return roles
	}
	for _, name := range f.EnvironmentNames() {
		e := f.Environments[name]
		p := "$.environments." + pathKey(name)
		if e == nil {
			if !v.pull {
				v.at(p, "environment is empty; give it hosts")
			}
			continue
		}
		if !nameRE.MatchString(name) {
			v.at(p, "%q is not a valid environment name: use lowercase letters, digits, '-', '_' or '.'", name)
		}
		v.validateStrategy(p, e)
		v.unsupported(p, e)
		v.validateLoadBalancer(p, e)
		if len(e.Hosts) == 0 && !v.pull {
			v.at(p, "missing required key hosts (at least one host)")
		}
		names, members := map[string]int{}, map[string]int{}
		for i, h := range e.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", p, i)
			if h == nil {
				v.at(hp, "empty host entry")
				continue
			}
			switch h.Transport {
			case TransportSSH:
			case TransportLocal:
				if h.Port != 0 || h.User != "" || h.IdentityFile != "" {
					v.at(hp, "port, user and identity_file do not apply to transport: local")
				}
			case "":
				v.at(hp, "missing required key host (an address or ~/.ssh/config alias), or set transport: local")
			default:
				v.at(hp+".transport", "unknown transport %q; use ssh or local", h.Transport)
			}
			if h.Port < 0 || h.Port > 65535 {
				v.at(hp+".port", "%d is not a TCP port", h.Port)
			}
			if strings.ContainsAny(h.Host, " \t/") {
				v.at(hp+".host", "%q is not a host name or address", h.Host)
			}
			prev, dupName := names[h.Name]
			if dupName && h.Name != "" {
				v.at(hp, "duplicate host %q: hosts[%d] already has this name; give each host a distinct name", h.Name, prev)
			} else {
				names[h.Name] = i
			}
			if strings.ContainsAny(h.LBName, " \t") {
				v.at(hp+".lb_name", "%q is not a load balancer member name", h.LBName)
			} else if prev, dup := members[h.MemberName()]; dup && !dupName && h.MemberName() != "" {
				v.at(hp, "hosts[%d] already has the load balancer member name %q; give this host its own lb_name", prev, h.MemberName())
			} else {
				members[h.MemberName()] = i
			}
			for _, r := range h.Roles {
				roles[r] = true
			}
		}
	}
	return roles
}

// validateStrategy checks environment p's strategy settings against its
// type and its number of hosts, and fills the defaults they need.
func (v *validator) validateStrategy(p string, e *Environment) {
	s := &e.Strategy
	sp := p + ".strategy"
	n := len(e.Hosts)
	if s.Parallel < 0 {
		v.at(sp+".parallel", "must not be negative")
	}
	switch s.Type {
	case StrategyAllAtOnce:
		for _, k := range []string{"batch", "min_healthy", "max_fail", "drain_timeout", "min_healthy_time", "rollback_on_failure", "canary"} {
			if v.present(sp + "." + k) {
				v.at(sp+"."+k, "applies to the rolling and serial strategies; all-at-once activates every host at once. Remove it, or set type: rolling")
			}
		}
		return
	case StrategySerial:
		if v.present(sp + ".batch") {
			v.at(sp+".batch", "serial activates one host at a time; remove batch, or use type: rolling with batch")
		}
		s.Batch = Count(1)
	case StrategyRolling, StrategyCanary:
		if !v.present(sp + ".batch") {
			s.Batch = Count(1)
		} else if s.Batch.IsZero() {
			v.at(sp+".batch", "must be at least 1 host (or 1%%)")
		}
	default:
		v.at(sp+".type", "unknown strategy %q; use all-at-once (also called two-phase), rolling, serial or canary", s.Type)
		return
	}
	v.validateCanary(sp, s)
	if e.LoadBalancer == nil {
		for _, k := range []string{"drain_timeout", "min_healthy_time"} {
			if v.present(sp + "." + k) {
				v.at(sp+"."+k, "is a load balancer step and this environment has no load_balancer; remove it, or add load_balancer")
			}
		}
	}
	if s.DrainTimeout == 0 {
		s.DrainTimeout = Duration(DefaultDrainTimeout)
	}
	if n == 0 {
		return // pull mode: the agents are the hosts, counted when the rollout runs
	}
	if s.MaxFail.Floor(n) > n {
		v.at(sp+".max_fail", "%s is more than the environment's %d hosts", s.MaxFail, n)
	}
	if mh := s.MinHealthy.Ceil(n); mh >= n {
		v.at(sp+".min_healthy", "%s of %d hosts would have to keep serving, so no host could ever be taken out; make it at most %d", s.MinHealthy, n, n-1)
	} else if b := min(s.Batch.Ceil(n), n); mh > 0 && n-b < mh {
		v.at(sp+".batch", "a batch of %d of the %d hosts leaves %d serving, fewer than min_healthy %s (%d); make batch at most %d", b, n, n-b, s.MinHealthy, mh, n-mh)
	}
}

// validateCanary checks the canary gate of strategy sp.
func (v *validator) validateCanary(sp string, s *Strategy) {
	if s.Type != StrategyCanary {
		if s.Canary != nil || v.present(sp+".canary") {
			v.at(sp+".canary", "applies to type: canary; remove it, or set type: canary")
		}
		return
	}
	c := s.Canary
	if c == nil || (c.Wait == 0 && c.Command == "" && c.URL == "") {
		// No check: the canary waits for drover promote or drover abort.
		return
	}
	if c.Wait <= 0 {
		v.at(sp+".canary", "missing wait: how long the check must keep passing, like wait: 5m")
	}
	if c.Command == "" && c.URL == "" {
		v.at(sp+".canary", "wait needs command (exits 0 while the canary is good) or url (answers 2xx while it is good); without a check, remove wait: the canary then waits for drover promote or drover abort")
	}
	if c.URL != "" && !strings.HasPrefix(c.URL, "http://") && !strings.HasPrefix(c.URL, "https://") {
		v.at(sp+".canary.url", "%q is not an http:// or https:// URL", c.URL)
	}
}

// unsupported refuses the keys of environment p that drover decodes but
// does not act on yet: accepting them would promise what a deploy does not
// do.
func (v *validator) unsupported(p string, e *Environment) {
	if e.Strategy.MaxUnavailable != 0 || v.present(p+".strategy.max_unavailable") {
		v.at(p+".strategy.max_unavailable", "not supported yet: use batch (how many hosts move at once) and min_healthy (how many must keep serving, as the load balancer sees it) instead")
	}
}

// pathKey is name as one step of a YAML path: quoted when it holds a dot,
// so that environment prod.eu is one key, not two.
func pathKey(name string) string {
	if strings.Contains(name, ".") && !strings.Contains(name, "'") {
		return "'" + name + "'"
	}
	return name
}

// present reports whether the file has a key at the YAML path p.
func (v *validator) present(p string) bool {
	yp, err := yaml.PathString(p)
	if err != nil {
		return false
	}
	n, err := yp.FilterFile(v.ast)
	return err == nil && n != nil
}

func (v *validator) validateHooks(f *File, roles map[string]bool) {
	for _, name := range f.HookOrder {
		h := f.Hooks[name]
		if !hookNameRE.MatchString(name) {
			// Quoted: the name may hold a newline or a terminal escape.
			e := &Error{File: v.file, Key: "hooks", Msg: fmt.Sprintf("%q is not a valid hook name: use 1 to 64 letters, digits, '_', '-', '.' or ':', starting with a letter or digit", name)}
			e.Line, e.Column = v.keyPosition("$.hooks", name)
			v.errs = append(v.errs, e)
			continue
		}
		p := "$.hooks." + pathKey(name)
		if h == nil {
			v.at(p, "hook has no commands")
			continue
		}
		switch h.When {
		case StagePrepare, StageBeforeActivate, StageAfterActivate:
		case "":
			v.at(p, "hook %q has no stage: add when: prepare, before_activate or after_activate", name)
		default:
			v.at(p+".when", "unknown stage %q; use prepare, before_activate or after_activate", h.When)
		}
		if len(h.Commands) == 0 {
			v.at(p, "hook has no commands")
		}
		if h.Timeout <= 0 && slices.Contains(v.keyOrder(p), "timeout") {
			v.at(p+".timeout", "must be more than 0, like 10m (without it a hook may run %s)", DefaultHookTimeout)
		}
		if h.Hotfix != HotfixRun && h.Hotfix != HotfixSkip && (h.Hotfix != "" || v.present(p+".hotfix")) {
			v.at(p+".hotfix", "%q is not skip or run: hotfix: skip leaves this hook out of `drover deploy --hotfix`, run (the default) keeps it", h.Hotfix)
		}
		for i, c := range h.Commands {
			if strings.TrimSpace(c) == "" {
				v.at(fmt.Sprintf("%s.commands[%d]", p, i), "empty command")
			}
		}
		if h.Role != "" && roles != nil && !roles[h.Role] {
			known := make([]string, 0, len(roles))
			for r := range roles {
				known = append(known, r)
			}
			slices.Sort(known)
			v.at(p+".role", "unknown role %q: no host has it (roles in use: %s)", h.Role, strings.Join(known, ", "))
		}
	}
}

func (v *validator) validateServices(f *File) {
	for _, name := range f.ServiceNames() {
		s := f.Services[name]
		p := "$.services." + pathKey(name)
		if s == nil {
			v.at(p, "service is empty; give it start or systemd")
			continue
		}
		if !nameRE.MatchString(name) {
			v.at(p, "%q is not a valid service name: use lowercase letters, digits, '-', '_' or '.'", name)
		}
		switch {
		case s.Start == "" && s.Systemd == "":
			v.at(p, "service needs start (a command drover runs) or systemd (a unit name)")
		case s.Start != "" && s.Systemd != "":
			v.at(p, "give start or systemd, not both")
		case s.Systemd != "" && !unitRE.MatchString(s.Systemd):
			v.at(p+".systemd", "%q is not a systemd unit name", s.Systemd)
		}
		if s.Systemd != "" && len(s.Ports) > 0 {
			v.at(p+".ports", "ports apply only to services drover starts (start:), not to systemd units")
		}
		if s.Systemd != "" && v.present(p+".stop_grace") {
			v.at(p+".stop_grace", "stop_grace applies only to services drover starts (start:); systemd stops the unit by its own TimeoutStopSec, set it in the unit")
		}
		v.validateSocket(p, s)
		seen := map[int]bool{}
		for i, port := range s.Ports {
			if port < 1 || port > 65535 {
				v.at(fmt.Sprintf("%s.ports[%d]", p, i), "%d is not a TCP port", port)
			}
			if seen[port] {
				v.at(fmt.Sprintf("%s.ports[%d]", p, i), "port %d is listed twice", port)
			}
			seen[port] = true
		}
		usesPort := strings.Contains(s.Start, "{{port}}")
		if s.Health != nil {
			usesPort = usesPort || strings.Contains(s.Health.HTTP, "{{port}}") || strings.Contains(s.Health.Command, "{{port}}")
			if (s.Health.HTTP == "") == (s.Health.Command == "") {
				v.at(p+".health", "give http (a URL answering 2xx) or command (exits 0 when healthy), one of them")
			}
			if s.Health.HTTP != "" && !strings.HasPrefix(s.Health.HTTP, "http://") && !strings.HasPrefix(s.Health.HTTP, "https://") {
				v.at(p+".health.http", "%q must start with http:// or https://", s.Health.HTTP)
			}
			if s.Health.Timeout < 0 || s.Health.Interval < 0 || s.Health.MinHealthyTime < 0 {
				v.at(p+".health", "timeout, interval and min_healthy_time must be positive")
			}
		}
		if usesPort && len(s.Ports) == 0 {
			v.at(p, "uses {{port}} but lists no ports; add ports: [8000]")
		}
	}
}

// shellOperators are what makes a start command more than one command.
var shellOperators = []string{"&&", "||", ";", "|", "\n", "&"}

func (v *validator) validateSocket(p string, s *Service) {
	if s.Bind != "" && !s.Socket {
		v.at(p+".bind", "bind applies only with socket: true (a service without it binds its own port)")
	} else if s.Bind != "" && s.Systemd != "" {
		v.at(p+".bind", "bind applies to services drover starts; a systemd unit's .socket unit says where it listens (ListenStream=)")
	} else if s.Bind != "" && net.ParseIP(s.Bind) == nil {
		v.at(p+".bind", "%q is not an IP address; give one like 127.0.0.1 or ::1, or leave bind out to listen on every address", s.Bind)
	}
	if s.ReusePort {
		switch {
		case s.Socket:
			v.at(p+".reuse_port", "give socket: true or reuse_port: true, not both (with socket: true drover already starts the new process first)")
		case s.Systemd != "":
			v.at(p+".reuse_port", "reuse_port applies to services drover starts (start:), not to systemd units")
		case len(s.Ports) == 0:
			v.at(p+".reuse_port", "reuse_port: true needs ports")
		}
	}
	if !s.Socket {
		return
	}
	if s.Systemd != "" {
		return // its .socket unit holds the sockets; checked before each restart
	}
	if len(s.Ports) == 0 {
		v.at(p+".socket", "socket: true needs ports: drover holds one listening socket per port")
	}
	for _, op := range shellOperators {
		if strings.Contains(s.Start, op) {
			v.at(p+".start", "with socket: true, start must be one command (drover execs it so that LISTEN_PID is the app's pid); %q makes it several: move them into a script that ends with exec", op)
			break
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
