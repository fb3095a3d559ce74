-- Argo CD health of a SpoutPipeline (spout-operator.dev), read from the conditions the
-- operator writes (the same ones kstatus, Flux and `kubectl wait` read):
--   Stalled=True                    -> Degraded (only a change of the spec can help)
--   Reconciling=True                -> Progressing (a change is applied, pipelines start)
--   status.paused (annotation)      -> Suspended (nothing is written to pachd meanwhile)
--   Ready=True                      -> Healthy, or Suspended when declared Stopped
--   Ready=False, nothing under way  -> Degraded (pachd unreachable, a pipeline failing)
-- A status or condition written for an older generation says nothing about this one:
-- Progressing until the operator has looked at the current spec.
-- Lua 5.1 (Argo CD runs gopher-lua): no integer division, no goto.
local hs = {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

local function stale(observed)
  return observed ~= nil and generation ~= nil and observed ~= generation
end

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind and not stale(c.observedGeneration) then
      return c
    end
  end
  return nil
end

local function reason_message(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the spout operator to reconcile this resource"
  return hs
end
if stale(obj.status.observedGeneration) then
  hs.status = "Progressing"
  hs.message = "Waiting for the spout operator to apply generation " .. tostring(generation)
  return hs
end

if obj.status.paused == true then
  hs.status = "Suspended"
  local synced = condition("Synced")
  if synced ~= nil then
    hs.message = reason_message(synced)
  else
    hs.message = "Reconciliation paused"
  end
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = reason_message(stalled)
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reason_message(reconciling)
  return hs
end

local ready = condition("Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the spout operator to reconcile this resource"
  return hs
end
if ready.status == "True" then
  if obj.spec ~= nil and obj.spec.state == "Stopped" then
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
  hs.message = reason_message(ready)
  return hs
end
hs.status = "Degraded"
hs.message = reason_message(ready)
return hs
