# Stand-in for the parts of nixpkgs' `pkgs` the Pluto module uses: packages are
# attribute sets with an `outPath` under /nix/store, so "${pkg}/bin/julia"
# gives a store path as it would on NixOS. Nothing is built. Julia attributes
# and versions follow docs/nixos-facts.md ("Julia in nixpkgs"); `withPackages`
# returns an environment package like nixpkgs' julia-modules without building it.
{ lib }:
let
  storeHash = name: builtins.substring 0 32 (builtins.hashString "sha256" name);
  package =
    pname: version: extra:
    {
      type = "derivation";
      name = "${pname}-${version}";
      inherit pname version;
      outPath = "/nix/store/${storeHash "${pname}-${version}"}-${pname}-${version}";
    }
    // extra;
  julia =
    pname: version:
    package pname version {
      withPackages =
        names:
        package "julia-${version}-env" version {
          packages = names;
          julia = pname;
        };
    };
in
{
  julia_110 = julia "julia" "1.10.11";
  julia_111 = julia "julia" "1.11.9";
  julia_112 = julia "julia" "1.12.6";
  julia_110-bin = julia "julia-bin" "1.10.11";
  julia_111-bin = julia "julia-bin" "1.11.9";
  julia_112-bin = julia "julia-bin" "1.12.6";
  julia-lts = julia "julia-bin" "1.10.11";
  julia-lts-bin = julia "julia-bin" "1.10.11";
  julia-stable = julia "julia" "1.12.6";
  julia-stable-bin = julia "julia-bin" "1.12.6";
  julia = julia "julia" "1.12.6";
  julia-bin = julia "julia-bin" "1.12.6";
  # Host programs the stand-in links to the machine's own (nixos_rebuild.py build_packages).
  python3 = package "python3" "3.11.2" { };
  systemd = package "systemd" "252" { };
}
