#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Installs (or upgrades) cal-agent as a Windows service.

.DESCRIPTION
    1. Copies the built folder (cal-agent.exe and _internal\) to %ProgramFiles%\cal-agent.
    2. Creates %ProgramData%\cal-agent (configuration, state database, reports, logs) with an ACL that
       lets only SYSTEM (the service) and Administrators in: it holds a snapshot of the directory,
       reports naming every employee and the bind password file.
    3. Copies config.example.yaml to config.yaml there if there is none yet (its Linux paths made
       relative to that folder).
    4. Runs `cal-agent.exe service install --startup auto` and sets restart-after-crash recovery.

    It does not start the service: edit the configuration first (the next steps are printed).
    Run it again to upgrade: the service is stopped, the program replaced; the data folder is kept.
    See docs\windows.md.

.PARAMETER Source
    The built folder holding cal-agent.exe (pyinstaller packaging\windows\cal-agent.spec).
    Default: cal-agent\ next to this script (a release zip), else dist\cal-agent of the repository.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File .\install.ps1
#>
[CmdletBinding()]
param(
    [string]$Source,
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'cal-agent'),
    [string]$DataDir = (Join-Path $env:ProgramData 'cal-agent')
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$ServiceName = 'cal-agent'
# The Linux paths of config.example.yaml -> paths relative to config.yaml's folder (cal-agent resolves
# relative paths against the configuration file's folder): state.db, reports, inventory.yaml, ca.pem.
$LinuxToWindows = @(
    @('sqlite:////var/lib/cal-agent/', 'sqlite:///'),
    @('/var/lib/cal-agent/', ''),
    @('/etc/cal-agent/', '')
)

function Invoke-Checked([string]$File, [string[]]$Arguments) {
    & $File @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "'$File $($Arguments -join ' ')' failed with exit code $LASTEXITCODE"
    }
}

# --- 1. the program -------------------------------------------------------------------------------

if (-not $Source) {
    $candidates = @((Join-Path $PSScriptRoot 'cal-agent'), (Join-Path $PSScriptRoot '..\..\dist\cal-agent'))
    $Source = $candidates | Where-Object { Test-Path -LiteralPath (Join-Path $_ 'cal-agent.exe') } |
        Select-Object -First 1
    if (-not $Source) {
        throw "cal-agent.exe not found in $($candidates -join ' or '): build it (packaging\windows\cal-agent.spec) or pass -Source"
    }
}
$Source = (Resolve-Path -LiteralPath $Source).Path
if (-not (Test-Path -LiteralPath (Join-Path $Source 'cal-agent.exe'))) { throw "no cal-agent.exe in $Source" }

$service = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($service -and $service.Status -ne 'Stopped') {
    Write-Host "Stopping the $ServiceName service (the running cycle finishes its current step)..."
    Stop-Service -Name $ServiceName
}

$exe = Join-Path $InstallDir 'cal-agent.exe'
if (Test-Path -LiteralPath $InstallDir) {
    if (Test-Path -LiteralPath $exe) {
        # An earlier version: remove it whole, so no file of it lingers in _internal\.
        Get-ChildItem -LiteralPath $InstallDir -Force | Remove-Item -Recurse -Force
    } elseif (Get-ChildItem -LiteralPath $InstallDir -Force | Select-Object -First 1) {
        throw "$InstallDir exists, is not empty and holds no cal-agent.exe: refusing to overwrite it"
    }
} else {
    New-Item -ItemType Directory -Path $InstallDir | Out-Null
}
Copy-Item -Path (Join-Path $Source '*') -Destination $InstallDir -Recurse -Force
Write-Host "Installed the program in $InstallDir"

# --- 2. the data folder, SYSTEM and Administrators only ---------------------------------------------

New-Item -ItemType Directory -Force -Path $DataDir | Out-Null
# Well-known SIDs, not names, so it works in every Windows language: S-1-5-18 SYSTEM,
# S-1-5-32-544 Administrators.  /inheritance:r drops what ProgramData hands down (Users may read).
Invoke-Checked 'icacls.exe' @($DataDir, '/inheritance:r', '/grant:r', '*S-1-5-18:(OI)(CI)F', '*S-1-5-32-544:(OI)(CI)F', '/Q')
Invoke-Checked 'icacls.exe' @($DataDir, '/setowner', '*S-1-5-32-544', '/Q')
foreach ($folder in @('reports', 'logs')) {
    New-Item -ItemType Directory -Force -Path (Join-Path $DataDir $folder) | Out-Null
}
Write-Host "Data folder $DataDir (SYSTEM and Administrators only)"

# --- 3. the configuration -----------------------------------------------------------------------------

$config = Join-Path $DataDir 'config.yaml'
if (Test-Path -LiteralPath $config) {
    Write-Host "Kept the existing $config"
} else {
    $examples = @((Join-Path $InstallDir '_internal\config.example.yaml'), (Join-Path $InstallDir 'config.example.yaml'),
                  (Join-Path $PSScriptRoot '..\..\config.example.yaml'))
    $example = $examples | Where-Object { Test-Path -LiteralPath $_ } | Select-Object -First 1
    if (-not $example) { throw "config.example.yaml not found in $($examples -join ' or ')" }
    $text = [System.IO.File]::ReadAllText($example)
    foreach ($pair in $LinuxToWindows) { $text = $text.Replace($pair[0], $pair[1]) }
    [System.IO.File]::WriteAllText($config, $text)  # UTF-8, no BOM
    Write-Host "Wrote $config from config.example.yaml: edit it before starting the service"
}

# --- 4. the service -----------------------------------------------------------------------------------

Invoke-Checked $exe @('service', 'install', '--startup', 'auto', '--config', $config)
# Restart one minute after a crash.  A clean stop, or a start refused for a bad configuration, is not
# a crash: that needs an admin, and restarting would only repeat it.
Invoke-Checked 'sc.exe' @('failure', $ServiceName, 'reset=', '86400', 'actions=', 'restart/60000/restart/60000/restart/60000')

Write-Host @"

cal-agent is installed; the service is not started yet.  Next steps, in an elevated PowerShell:

  1. Edit $config
     (every key: config.example.yaml, docs\configuration.md) and write the CAL register
     $(Join-Path $DataDir 'inventory.yaml') (docs\inventory.md).
  2. Give the bind password in a file only SYSTEM and Administrators can read (docs\windows.md):
     password_file: bind-password
  3. Check:  & '$exe' check-config
             & '$exe' test-connection
  4. Start:  & '$exe' service start      (or: Start-Service $ServiceName)

Log: $(Join-Path $DataDir 'logs\cal-agent.log')
Start, stop and errors: Event Viewer > Windows Logs > Application, source cal-agent.
"@
