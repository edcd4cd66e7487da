# Sourced by test-mysql.sh and test-vitess.sh: a minimal Debian sid chroot
# (sid ships MySQL; Debian's stable releases ship only MariaDB), built once
# with debootstrap and kept, for throwaway servers run inside it.
#
#   sid_chroot ROOT FAIL PACKAGE...
#
# makes ROOT a sid chroot with every PACKAGE installed: it builds the chroot
# when ROOT has none (about a minute, 600 MB), or installs into the existing
# one the packages it lacks. On failure it calls FAIL with the reason (the
# callers' FAIL exits with status 3: nothing to test against, not a test
# failure). Needs root.

sid_chroot() {
	local root=$1 fail=$2
	shift 2
	local pkgs=("$@") missing=() p
	if [[ ! -f "$root/.keystore-ready" ]]; then
		if ! command -v debootstrap >/dev/null 2>&1; then
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >/dev/null ||
				"$fail" "could not install debootstrap"
		fi
		rm -rf "$root"
		mkdir -p "$(dirname "$root")"
		echo "sid-chroot: building a Debian sid chroot with ${pkgs[*]} in $root (about a minute)"
		debootstrap --variant=minbase --include="$(
			IFS=,
			echo "${pkgs[*]}"
		)" sid "$root" http://deb.debian.org/debian >"$root.log" 2>&1 ||
			"$fail" "debootstrap failed, see $root.log"
		touch "$root/.keystore-ready"
		return 0
	fi
	for p in "${pkgs[@]}"; do
		chroot "$root" dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			missing+=("$p")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	echo "sid-chroot: installing ${missing[*]} in $root"
	# Check-Valid-Until off: a mirror whose sid Release file has passed its
	# Valid-Until date (seen on these machines) still serves signed,
	# consistent indexes; debootstrap does not check that date either.
	{
		chroot "$root" apt-get -o Acquire::Check-Valid-Until=false update -qq &&
			chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	} >>"$root.log" 2>&1 || "$fail" "could not install ${missing[*]} in $root, see $root.log"
}
