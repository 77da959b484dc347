# Starts Pluto for pluto.service (files/default.nix) with a secret set in
# advance, and swaps in a new secret while running when the secret file
# changes, so rotating the link keeps running notebooks alive.
#
# Interface: the environment the module sets (PLUTO_SECRET_FILE, PLUTO_HOST,
# PLUTO_PORT, PLUTO_NOTEBOOK_DIR, PLUTO_INSTALL_MODE, PLUTO_VERSION). Lines it
# prints that `fab` reads from the journal all start with "pluto-launcher: ".

import Pkg
using SHA: sha256

# The rule of tasks/secretfile.py: the whole file is one line of at least 16 [A-Za-z0-9].
const SECRET_PATTERN = r"\A[A-Za-z0-9]{16,}\z"

say(message) = (println(stderr, "pluto-launcher: ", message); flush(stderr))

function fail(message)
    say(message)
    exit(1)
end

function setting(name)
    value = get(ENV, name, "")
    isempty(value) && fail("$name is not set (pluto.service sets it in files/default.nix)")
    return value
end

# An empty secret would let everyone in (Pluto compares the query parameter with
# the secret, src/webserver/Authentication.jl); other characters would break the
# raw cookie.
function read_secret(path)
    text = try
        read(path, String)
    catch problem
        return nothing, "cannot read $path: $(sprint(showerror, problem))"
    end
    secret = endswith(text, "\n") ? chop(text) : text
    if !occursin(SECRET_PATTERN, secret)
        return nothing, "$path does not hold one line of at least 16 characters A-Z, a-z, 0-9"
    end
    return String(secret), ""
end

fingerprint(secret) = bytes2hex(sha256(secret))[1:12]

# pkg mode: the pinned version lives in an environment of its own in the depot,
# installed on first start and again when the pinned version or Julia's minor
# version changes (an environment resolved by one Julia may not load in another).
function ensure_pluto_installed(version)
    name = "pluto-$version-julia-$(VERSION.major).$(VERSION.minor)"
    environment = joinpath(first(DEPOT_PATH), "environments", name)
    Pkg.activate(environment; io = devnull)
    wanted = VersionNumber(version)
    if !any(p -> p.name == "Pluto" && p.version == wanted, values(Pkg.dependencies()))
        say("Installing Pluto $version (first start) …")
        Pkg.add(Pkg.PackageSpec(name = "Pluto", version = version))
        Pkg.precompile()
        say("Pluto $version installed")
    end
end

const secret_file = setting("PLUTO_SECRET_FILE")
const notebook_dir = setting("PLUTO_NOTEBOOK_DIR")
secret, problem = read_secret(secret_file)
secret === nothing && fail(problem)

setting("PLUTO_INSTALL_MODE") == "pkg" && ensure_pluto_installed(setting("PLUTO_VERSION"))
import Pluto

say("Starting Pluto $(pkgversion(Pluto)) on Julia $(VERSION)")
say("Secret loaded (fingerprint $(fingerprint(secret)))")

options = Pluto.Configuration.from_flat_kwargs(;
    host = setting("PLUTO_HOST"),   # an IP literal; 127.0.0.1 prints as localhost
    port = parse(Int, setting("PLUTO_PORT")),
    launch_browser = false,
    dismiss_update_notification = true,
    require_secret_for_access = true,
    require_secret_for_open_links = true,
    notebook_path_suggestion = joinpath(notebook_dir, ""),
)
# Pluto.run has no secret keyword; a ServerSession takes one (src/webserver/Session.jl).
session = Pluto.ServerSession(; secret, options)
server = Pluto.run!(session)

# ServerSession.secret is read on every request, so replacing it takes effect
# at once and old links and cookies stop working. An open editor WebSocket is
# checked only when it opens (src/webserver/WebServer.jl, Pluto v1.0.1), so every
# connected client is closed too, as Pluto's own shutdown does: their browsers
# must come back with the new link. Polled, because the file is replaced by a
# rename, which a watch on the old file would not see.
@async begin
    last_problem = ""
    while true
        sleep(1)
        new_secret, problem = read_secret(secret_file)
        if new_secret === nothing
            problem != last_problem && say("keeping the current secret: $problem")
            last_problem = problem
        elseif new_secret != session.secret
            session.secret = new_secret
            for client in values(session.connected_clients)
                try
                    close(client.stream)
                catch
                end
            end
            empty!(session.connected_clients)
            last_problem = ""
            say("Secret rotated (fingerprint $(fingerprint(new_secret)))")
        end
    end
end

wait(server)
