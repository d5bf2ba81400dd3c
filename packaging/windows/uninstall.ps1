#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Removes the cal-agent Windows service and program.

.DESCRIPTION
    Stops and removes the service, then deletes %ProgramFiles%\cal-agent.  The data folder
    %ProgramData%\cal-agent (configuration, register, state database, reports, logs) is kept unless
    -RemoveData is given: reports and the database may be audit evidence.  See docs\windows.md.

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File .\uninstall.ps1
.EXAMPLE
    powershell -ExecutionPolicy Bypass -File .\uninstall.ps1 -RemoveData
#>
[CmdletBinding()]
param(
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'cal-agent'),
    [string]$DataDir = (Join-Path $env:ProgramData 'cal-agent'),
    [switch]$RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$ServiceName = 'cal-agent'
$exe = Join-Path $InstallDir 'cal-agent.exe'

function Invoke-Checked([string]$File, [string[]]$Arguments) {
    & $File @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "'$File $($Arguments -join ' ')' failed with exit code $LASTEXITCODE"
    }
}

$service = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($service) {
    if ($service.Status -ne 'Stopped') {
        Write-Host "Stopping the $ServiceName service (the running cycle finishes its current step)..."
        Stop-Service -Name $ServiceName
    }
    if (Test-Path -LiteralPath $exe) {
        Invoke-Checked $exe @('service', 'remove')  # also unregisters the Event Log source
    } else {
        Invoke-Checked 'sc.exe' @('delete', $ServiceName)
    }
} else {
    Write-Host "No $ServiceName service installed"
}

if (Test-Path -LiteralPath $exe) {
    Remove-Item -LiteralPath $InstallDir -Recurse -Force
    Write-Host "Removed $InstallDir"
} elseif (Test-Path -LiteralPath $InstallDir) {
    Write-Host "$InstallDir holds no cal-agent.exe: left as it is"
}

if ($RemoveData) {
    if (Test-Path -LiteralPath $DataDir) {
        Remove-Item -LiteralPath $DataDir -Recurse -Force
        Write-Host "Removed $DataDir"
    }
} else {
    Write-Host "Kept $DataDir (configuration, register, state database, reports, logs);"
    Write-Host "delete it yourself, or run again with -RemoveData"
}
